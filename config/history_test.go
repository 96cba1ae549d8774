package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseEventsKeep(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		in   string
		want EventsKeep
		err  string
	}{
		{in: "", want: DefaultEventsKeep},
		{in: "90d,100000", want: EventsKeep{Age: 90 * day, Count: 100_000}},
		{in: " 7d , 500 ", want: EventsKeep{Age: 7 * day, Count: 500}},
		{in: "36h,10", want: EventsKeep{Age: 36 * time.Hour, Count: 10}},
		{in: "90d", err: "not AGE,COUNT"},
		{in: "soon,10", err: `age "soon" is neither days`},
		{in: "0d,10", err: "not a number of days"},
		{in: "30m,10", err: "at least 1h"},
		{in: "90d,0", err: "at least 1"},
		{in: "90d,many", err: `count "many"`},
	}
	for _, tt := range tests {
		got, err := ParseEventsKeep(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseEventsKeep(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseEventsKeep(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if back, err := ParseEventsKeep(got.String()); err != nil || back != got {
			t.Errorf("ParseEventsKeep(%q).String() = %q parses to %+v, %v", tt.in, got.String(), back, err)
		}
	}
}

func TestEventsKeepSettings(t *testing.T) {
	c, err := Load(Sources{Env: envOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if c.Registry.EventsKeep != "90d,100000" || c.Registry.EventsCompactSize != 16<<20 {
		t.Errorf("defaults: events_keep %q, events_compact_size %d", c.Registry.EventsKeep, c.Registry.EventsCompactSize)
	}
	file := writeFile(t, "registry:\n  events_keep: 30d,5000\n  events_compact_size: 1048576\n")
	if c, err = Load(Sources{File: file, Env: envOf(nil)}); err != nil {
		t.Fatal(err)
	}
	if c.Registry.EventsKeep != "30d,5000" || c.Registry.EventsCompactSize != 1<<20 {
		t.Errorf("from the file: events_keep %q, events_compact_size %d", c.Registry.EventsKeep, c.Registry.EventsCompactSize)
	}
	for _, tt := range []struct {
		src  Sources
		want string
	}{
		{Sources{Env: envOf(map[string]string{"LABREG_EVENTS_KEEP": "forever"})}, "registry.events_keep: \"forever\" is not AGE,COUNT"},
		{Sources{Flags: map[string]string{"events-keep": "90d,-1"}}, "registry.events_keep: count"},
		{Sources{Flags: map[string]string{"events-compact-size": "1000"}}, "registry.events_compact_size: must be at least 65536"},
		{Sources{File: writeFile(t, "registry:\n  events_keep:\n    age: 90d\n")}, "registry.events_keep: expected a single value"},
	} {
		if tt.src.Env == nil {
			tt.src.Env = envOf(nil)
		}
		if _, err := Load(tt.src); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load = %v, want an error with %q", err, tt.want)
		}
	}
}
