package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// EventsKeep is a parsed registry.events_keep value: how much of the
// history the registry keeps. An event goes once it is older than Age or
// Count newer events are kept; pull counts go once older than Age.
type EventsKeep struct {
	Age   time.Duration
	Count int
}

// DefaultEventsKeep is registry.events_keep's default: 90 days, 100,000
// events.
var DefaultEventsKeep = EventsKeep{Age: 90 * 24 * time.Hour, Count: 100_000}

// ParseEventsKeep parses "AGE,COUNT": AGE in days ("90d") or as a
// duration ("36h"), at least 1h; COUNT a whole number of events, at
// least 1. "" is DefaultEventsKeep.
func ParseEventsKeep(v string) (EventsKeep, error) {
	if strings.TrimSpace(v) == "" {
		return DefaultEventsKeep, nil
	}
	age, count, ok := strings.Cut(v, ",")
	if !ok {
		return EventsKeep{}, fmt.Errorf("%q is not AGE,COUNT (e.g. 90d,100000)", v)
	}
	age, count = strings.TrimSpace(age), strings.TrimSpace(count)
	var k EventsKeep
	if days, found := strings.CutSuffix(age, "d"); found {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 {
			return EventsKeep{}, fmt.Errorf("age %q is not a number of days (e.g. 90d)", age)
		}
		k.Age = time.Duration(n) * 24 * time.Hour
	} else {
		d, err := time.ParseDuration(age)
		if err != nil {
			return EventsKeep{}, fmt.Errorf("age %q is neither days (90d) nor a duration (36h)", age)
		}
		k.Age = d
	}
	if k.Age < time.Hour {
		return EventsKeep{}, errors.New("age must be at least 1h (pulls are counted per hour)")
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		return EventsKeep{}, fmt.Errorf("count %q is not a whole number of events, at least 1", count)
	}
	k.Count = n
	return k, nil
}

// String renders k as ParseEventsKeep reads it.
func (k EventsKeep) String() string {
	age := k.Age.String()
	if k.Age%(24*time.Hour) == 0 {
		age = fmt.Sprintf("%dd", k.Age/(24*time.Hour))
	}
	return fmt.Sprintf("%s,%d", age, k.Count)
}
