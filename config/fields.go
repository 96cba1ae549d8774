package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Field is one configurable value: its YAML key, flag name and environment name.
type Field struct {
	Key   string // dotted YAML key, e.g. "registry.listen"
	Flag  string // flag name without dashes, e.g. "listen"
	Env   string // environment variable, e.g. "LABREG_LISTEN"
	Usage string
	Kind  reflect.Kind
	// Redact hides the password of a URL-shaped value when displayed.
	Redact bool
	value  reflect.Value
}

// Fields lists every configurable value of c, in declaration order.
func (c *Config) Fields() []Field {
	var out []Field
	root := reflect.ValueOf(c).Elem()
	for i := 0; i < root.NumField(); i++ {
		sec := root.Type().Field(i)
		sv := root.Field(i)
		for j := 0; j < sv.NumField(); j++ {
			f := sv.Type().Field(j)
			flag := f.Tag.Get("flag")
			out = append(out, Field{
				Key:    sec.Tag.Get("yaml") + "." + f.Tag.Get("yaml"),
				Flag:   flag,
				Env:    "LABREG_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_")),
				Usage:  f.Tag.Get("usage"),
				Kind:   f.Type.Kind(),
				Redact: f.Tag.Get("redact") == "url",
				value:  sv.Field(j),
			})
		}
	}
	return out
}

// String returns the field's current value as text, with the password of
// a Redact field hidden (it is for display: `labreg config`, the UI).
func (f Field) String() string {
	if d, ok := f.value.Interface().(time.Duration); ok {
		return d.String()
	}
	if f.Redact {
		return redact(f.value.String())
	}
	return fmt.Sprint(f.value.Interface())
}

// Set parses s into the field.
func (f Field) Set(s string) error {
	switch f.value.Interface().(type) {
	case string:
		f.value.SetString(s)
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%s: %q is not true or false", f.Key, s)
		}
		f.value.SetBool(b)
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s: %q is not a duration (e.g. 30s)", f.Key, s)
		}
		f.value.SetInt(int64(d))
	case int, int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %q is not a whole number", f.Key, s)
		}
		f.value.SetInt(n)
	case float64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%s: %q is not a number", f.Key, s)
		}
		f.value.SetFloat(x)
	default:
		return fmt.Errorf("%s: unsupported type %s", f.Key, f.Kind)
	}
	return nil
}
