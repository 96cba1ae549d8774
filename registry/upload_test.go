package registry

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
)

// TestAppendHashed checks that the upload writer stores and hashes every
// byte in order:
// bodies of many sizes, read in small and large pieces, appended after
// existing data, and a body that breaks off.
func TestAppendHashed(t *testing.T) {
	piece := uploadBufSize
	tests := []struct {
		name    string
		prefix  int // bytes already in the file (hashed before)
		size    int
		small   bool  // the body reads at most half of what is asked
		failAt  int   // >0: the body fails after this many bytes
		wantErr error // the error appendHashed must wrap
	}{
		{name: "empty", size: 0},
		{name: "one byte", size: 1},
		{name: "one piece", size: piece},
		{name: "many pieces and a bit", size: 11*piece + 12345},
		{name: "many pieces, short reads", size: 9*piece + 7, small: true},
		{name: "after existing data", prefix: 3*piece + 5, size: 6*piece + 99},
		{name: "body breaks off", size: 8 * piece, failAt: 5*piece + 3, wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, tt.prefix+tt.size)
			rand.NewChaCha8([32]byte{byte(tt.size)}).Read(data)
			p := filepath.Join(t.TempDir(), "data")
			if err := os.WriteFile(p, data[:tt.prefix], 0o666); err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			h.Write(data[:tt.prefix])
			var body io.Reader = bytes.NewReader(data[tt.prefix:])
			if tt.failAt > 0 {
				body = io.MultiReader(bytes.NewReader(data[tt.prefix:tt.prefix+tt.failAt]), iotest.ErrReader(io.ErrUnexpectedEOF))
			}
			if tt.small {
				body = iotest.HalfReader(body)
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			n, err := appendHashed(f, int64(tt.prefix), h, body, newMemBudget(4*uploadBufSize))
			f.Close()
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				if n != int64(tt.failAt) {
					t.Fatalf("wrote %d bytes before the break, want %d", n, tt.failAt)
				}
				return
			}
			if err != nil || n != int64(tt.size) {
				t.Fatalf("appendHashed: %d bytes, %v; want %d", n, err, tt.size)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("file holds %d bytes, not the %d sent (or not in order)", len(got), len(data))
			}
			if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatal("hash differs from sha256 of the data")
			}
		})
	}
}
