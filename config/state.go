package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// ServerState is what a running `labreg serve` tells the client commands on
// the same host: the address it advertises and how it serves. It is written
// to StateFile when the registry listens and removed when serve exits.
type ServerState struct {
	PID       int    `json:"pid"`
	Advertise string `json:"advertise"`
	Listen    string `json:"listen"` // the address it really listens on
	TLS       bool   `json:"tls"`
	// TLSCert and TLSKey are the files it serves HTTPS with (paths only).
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
}

// RuntimeDir is where a running server leaves its state:
// $XDG_RUNTIME_DIR/labreg, else /run/labreg for root, else
// $TMPDIR/labreg-<uid>.
func RuntimeDir(env func(string) (string, bool)) string {
	if env == nil {
		env = os.LookupEnv
	}
	if d, ok := env("XDG_RUNTIME_DIR"); ok && d != "" {
		return filepath.Join(d, "labreg")
	}
	if os.Geteuid() == 0 {
		return "/run/labreg"
	}
	return filepath.Join(os.TempDir(), "labreg-"+strconv.Itoa(os.Geteuid()))
}

// StateFile is RuntimeDir/serve.json.
func StateFile(env func(string) (string, bool)) string {
	return filepath.Join(RuntimeDir(env), "serve.json")
}

// WriteServerState records st in path (see StateFile) for the client
// commands. The returned function removes the file if it is still st's.
func WriteServerState(path string, st ServerState) (remove func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return func() {}, fmt.Errorf("recording the running server: %w", err)
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := path + ".tmp" + strconv.Itoa(st.PID)
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return func() {}, fmt.Errorf("recording the running server: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return func() {}, fmt.Errorf("recording the running server: %w", err)
	}
	return func() {
		if cur, err := ReadServerState(path); err == nil && cur.PID == st.PID {
			os.Remove(path)
		}
	}, nil
}

// ReadServerState reads path.
func ReadServerState(path string) (ServerState, error) {
	var st ServerState
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// RunningServer returns the state of the labreg serve on this host that
// recorded itself in path, if its process still runs.
func RunningServer(path string) (ServerState, bool) {
	st, err := ReadServerState(path)
	if err != nil || st.PID <= 0 || st.Advertise == "" {
		return st, false
	}
	if err := syscall.Kill(st.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return st, false // gone (a killed serve leaves its file)
	}
	return st, true
}
