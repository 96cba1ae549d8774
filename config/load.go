package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Sources are the inputs of Load besides the defaults.
type Sources struct {
	// File is a YAML config file; empty means $LABREG_CONFIG, else the first
	// of DefaultFiles that exists.
	File string
	// Env looks up environment variables; nil means os.LookupEnv.
	Env func(string) (string, bool)
	// Flags maps flag names (e.g. "listen") to values the user set.
	Flags map[string]string
	// DefaultFiles are the config files looked for when neither File nor
	// $LABREG_CONFIG names one; nil means DefaultFiles(Env).
	DefaultFiles []string
	// Server is set by `labreg serve`: it does not take registry.advertise
	// from a running server (StateFile), it is that server.
	Server bool
}

// DefaultFiles are the config files every labreg command (serve and the
// clients alike) reads when no --config or $LABREG_CONFIG names one, the
// first that exists: $XDG_CONFIG_HOME/labreg/config.yaml (default
// ~/.config/labreg/config.yaml), then /etc/labreg/config.yaml.
func DefaultFiles(env func(string) (string, bool)) []string {
	if env == nil {
		env = os.LookupEnv
	}
	var out []string
	if x, ok := env("XDG_CONFIG_HOME"); ok && x != "" {
		out = append(out, filepath.Join(x, "labreg", "config.yaml"))
	} else if h, ok := env("HOME"); ok && h != "" {
		out = append(out, filepath.Join(h, ".config", "labreg", "config.yaml"))
	}
	return append(out, "/etc/labreg/config.yaml")
}

// Origins says where each value of a loaded Config came from, by dotted
// key: "config file F", "environment LABREG_X", "flag --x", "the running
// labreg serve (…)", or how it was derived. Keys left at their default are
// absent.
type Origins map[string]string

// Of is the origin of key, "default" when it kept its default.
func (o Origins) Of(key string) string {
	if s, ok := o[key]; ok {
		return s
	}
	return "default"
}

// Load builds the effective configuration: defaults, then the file, then
// LABREG_* variables, then flags; then Resolve and Validate.
func Load(src Sources) (*Config, error) {
	c, _, err := LoadOrigins(src)
	return c, err
}

// LoadOrigins is Load that also says where each value came from. A client
// (not src.Server) whose registry.advertise is set nowhere takes it, and
// the TLS files, from the labreg serve running on this host (StateFile),
// so that `labreg serve --advertise A` and the commands run later in
// another shell agree on A.
func LoadOrigins(src Sources) (*Config, Origins, error) {
	c := Default()
	origins := Origins{}
	env := src.Env
	if env == nil {
		env = os.LookupEnv
	}
	file := src.File
	if file == "" {
		file, _ = env("LABREG_CONFIG")
	}
	if file == "" {
		defaults := src.DefaultFiles
		if defaults == nil {
			defaults = DefaultFiles(env)
		}
		for _, f := range defaults {
			if _, err := os.Stat(f); err == nil {
				file = f
				break
			}
		}
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, fmt.Errorf("reading config file: %w", err)
		}
		set, err := c.decodeYAML(data)
		if err != nil {
			return nil, nil, fmt.Errorf("config file %s: %w", file, err)
		}
		for _, k := range set {
			origins[k] = "config file " + file
		}
	}
	fields := c.Fields()
	for _, f := range fields {
		if v, ok := env(f.Env); ok {
			if err := f.Set(v); err != nil {
				return nil, nil, fmt.Errorf("environment %s: %w", f.Env, err)
			}
			origins[f.Key] = "environment " + f.Env
		}
	}
	byFlag := map[string]Field{}
	for _, f := range fields {
		byFlag[f.Flag] = f
	}
	names := make([]string, 0, len(src.Flags))
	for n := range src.Flags {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f, ok := byFlag[n]
		if !ok {
			return nil, nil, fmt.Errorf("unknown setting --%s", n)
		}
		if err := f.Set(src.Flags[n]); err != nil {
			return nil, nil, fmt.Errorf("flag --%s: %w", n, err)
		}
		origins[f.Key] = "flag --" + n
	}
	if _, set := origins["registry.advertise"]; !set && !src.Server {
		path := StateFile(env)
		if st, ok := RunningServer(path); ok {
			from := fmt.Sprintf("the running labreg serve (pid %d, %s)", st.PID, path)
			c.Registry.Advertise, origins["registry.advertise"] = st.Advertise, from
			_, certSet := origins["registry.tls_cert"]
			_, keySet := origins["registry.tls_key"]
			if st.TLS && !certSet && !keySet && st.TLSCert != "" {
				c.Registry.TLSCert, origins["registry.tls_cert"] = st.TLSCert, from
				c.Registry.TLSKey, origins["registry.tls_key"] = st.TLSKey, from
			}
		}
	}
	advertiseSet := c.Registry.Advertise != ""
	clientSet := c.Client.Registry != ""
	if err := c.Resolve(); err != nil {
		return nil, nil, err
	}
	if !advertiseSet {
		how := "derived: this host's first non-loopback IPv4 and registry.listen's port (set registry.advertise"
		if !src.Server {
			how += "; no labreg serve runs here"
		}
		origins["registry.advertise"] = how + ")"
	}
	if !clientSet {
		origins["client.registry"] = "registry.advertise"
	}
	return c, origins, c.Validate()
}

// decodeYAML applies a YAML document through the same Field setters as
// env and flags, so every error names the key and its line. It returns the
// keys it set.
func (c *Config) decodeYAML(data []byte) ([]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 { // empty file
		return nil, nil
	}
	var set []string
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: expected a mapping of sections (registry:, ui:, …)", root.Line)
	}
	byKey := map[string]Field{}
	sections := map[string]bool{}
	for _, f := range c.Fields() {
		byKey[f.Key] = f
		sec, _, _ := strings.Cut(f.Key, ".")
		sections[sec] = true
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		sk, sv := root.Content[i], root.Content[i+1]
		if !sections[sk.Value] {
			errs = append(errs, fmt.Errorf("line %d: unknown key %q", sk.Line, sk.Value))
			continue
		}
		if sv.Kind != yaml.MappingNode {
			if sv.Tag == "!!null" {
				continue
			}
			errs = append(errs, fmt.Errorf("line %d: %s: expected a mapping", sv.Line, sk.Value))
			continue
		}
		for j := 0; j+1 < len(sv.Content); j += 2 {
			k, v := sv.Content[j], sv.Content[j+1]
			key := sk.Value + "." + k.Value
			f, ok := byKey[key]
			if !ok {
				errs = append(errs, fmt.Errorf("line %d: unknown key %q", k.Line, key))
				continue
			}
			if v.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Errorf("line %d: %s: expected a single value", v.Line, key))
				continue
			}
			if err := f.Set(v.Value); err != nil {
				errs = append(errs, fmt.Errorf("line %d: %w", v.Line, err))
				continue
			}
			set = append(set, key)
		}
	}
	return set, errors.Join(errs...)
}
