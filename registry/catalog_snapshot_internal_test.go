package registry

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestSnapshotFormat: a snapshot reads back as written, and a file cut
// short, of another version or with a bad line is refused rather than
// half used.
func TestSnapshotFormat(t *testing.T) {
	d1, d2 := digest.FromString("one"), digest.FromString("two")
	s := &snapshot{store: "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1", offline: "0123abcd",
		written: time.Unix(0, 1796694417841813501), repos: []snapRepo{
			{name: "a/app", size: 1234, tags: []snapTag{
				{name: "1.0", digest: d1, pushed: time.Unix(0, 1796694417841813501).UTC()},
				{name: "latest", digest: d2}, // no push time known
			}},
			{name: "b", size: 0, dirty: true, stale: []string{"x", "y"}},
			{name: "c/d/e", size: 1 << 40, tags: []snapTag{{name: "v_1-2.3", digest: d2, pushed: time.Unix(1, 0).UTC()}}},
		}}
	b := s.encode()
	got, err := decodeSnapshot(b)
	if err != nil {
		t.Fatalf("decoding what was encoded: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, s)
	}
	empty := &snapshot{store: "filesystem", written: time.Unix(0, 5)}
	if got, err := decodeSnapshot(empty.encode()); err != nil || len(got.repos) != 0 || got.offline != "" {
		t.Errorf("an empty index: %+v, %v", got, err)
	}

	for name, bad := range map[string][]byte{
		"cut short":         b[:len(b)-20],
		"cut at a line end": b[:bytes.LastIndex(b, []byte("\nt "))+1],
		"another version":   bytes.Replace(b, []byte(snapshotMagic), []byte("labreg-catalog-index 2"), 1),
		"a bad number":      bytes.Replace(b, []byte("r a/app 1234"), []byte("r a/app 12x4"), 1),
		"an unknown line":   bytes.Replace(b, []byte("\ns x\n"), []byte("\nq x\n"), 1),
		"a count off":       bytes.Replace(b, []byte("end 3"), []byte("end 4"), 1),
		"a tag before any":  bytes.Replace(b, []byte("r a/app 1234\n"), nil, 1),
		"nothing":           nil,
	} {
		if _, err := decodeSnapshot(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
