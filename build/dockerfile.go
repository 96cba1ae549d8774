package build

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// DockerfileError is a problem at one line of a Dockerfile. It prints as
// "FILE:LINE: INSTRUCTION: message".
type DockerfileError struct {
	File        string // the Dockerfile path as given
	Line        int    // 1-based; 0 when the problem has no line
	Instruction string // upper case, e.g. "COPY"; empty when unknown
	Err         error
}

func (e *DockerfileError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Instruction != "" {
		b.WriteString(": " + e.Instruction)
	}
	b.WriteString(": " + e.Err.Error())
	return b.String()
}

func (e *DockerfileError) Unwrap() error { return e.Err }

// ErrNeedsRun marks a Dockerfile the native engine cannot build because an
// instruction (RUN) needs a container.
var ErrNeedsRun = errors.New("needs a container, which the native engine does not run; build with --engine buildkit or auto")

// Dockerfile is a parsed Dockerfile: its instructions, grouped by stage,
// each still unexpanded so that it can be evaluated against any environment.
type Dockerfile struct {
	// Path is the file as named in error messages.
	Path string
	// Escape is the escape token (`\` unless a directive says otherwise).
	Escape rune
	// MetaArgs are the ARG instructions before the first FROM.
	MetaArgs []*node
	// Stages in file order.
	Stages []*stageNodes
	// Directives are "# labreg:NAME ARGS" comment lines (name -> args, line).
	Directives []Directive
}

// Directive is a "# labreg:NAME ARGS…" comment in a Dockerfile: labreg-only
// instructions that every other builder ignores.
type Directive struct {
	Name string
	Args []string
	Line int
}

type node struct {
	n    *parser.Node
	name string // upper case
}

type stageNodes struct {
	from     *node
	name     string // lower case "AS" name, or ""
	baseName string // unexpanded FROM argument
	platform string
	commands []*node
}

// ParseDockerfile parses the Dockerfile at path with BuildKit's parser. Every
// error names path:line and the instruction.
func ParseDockerfile(path string) (*Dockerfile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading Dockerfile: %w", err)
	}
	return parseDockerfile(path, data)
}

func parseDockerfile(path string, data []byte) (*Dockerfile, error) {
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, locate(path, "", err)
	}
	df := &Dockerfile{Path: path, Escape: res.EscapeToken}
	for _, n := range res.AST.Children {
		nd := &node{n: n, name: strings.ToUpper(n.Value)}
		ins, err := instructions.ParseInstruction(n)
		if err != nil {
			return nil, df.errAt(nd, cleanParseErr(err))
		}
		switch c := ins.(type) {
		case *instructions.Stage:
			df.Stages = append(df.Stages, &stageNodes{from: nd, name: strings.ToLower(c.Name), baseName: c.BaseName, platform: c.Platform})
		case *instructions.ArgCommand:
			if len(df.Stages) == 0 {
				df.MetaArgs = append(df.MetaArgs, nd)
				continue
			}
			df.Stages[len(df.Stages)-1].commands = append(df.Stages[len(df.Stages)-1].commands, nd)
		case instructions.Command:
			if len(df.Stages) == 0 {
				return nil, df.errAt(nd, errors.New("instruction before the first FROM"))
			}
			df.Stages[len(df.Stages)-1].commands = append(df.Stages[len(df.Stages)-1].commands, nd)
		default:
			return nil, df.errAt(nd, fmt.Errorf("unsupported instruction %T", ins))
		}
	}
	if len(df.Stages) == 0 {
		return nil, &DockerfileError{File: path, Err: errors.New("no FROM instruction")}
	}
	for i, line := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "#")
		if !ok {
			continue
		}
		rest, ok = strings.CutPrefix(strings.TrimSpace(rest), "labreg:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		df.Directives = append(df.Directives, Directive{Name: f[0], Args: f[1:], Line: i + 1})
	}
	return df, nil
}

// HasRun reports whether any stage RUNs a command (the native engine cannot).
func (df *Dockerfile) HasRun() (int, bool) {
	for _, s := range df.Stages {
		for _, c := range s.commands {
			if c.name == "RUN" {
				return c.n.StartLine, true
			}
		}
	}
	return 0, false
}

// errAt wraps err with the Dockerfile location of nd.
func (df *Dockerfile) errAt(nd *node, err error) error {
	var de *DockerfileError
	if errors.As(err, &de) {
		return err
	}
	return &DockerfileError{File: df.Path, Line: nd.n.StartLine, Instruction: nd.name, Err: err}
}

// cleanParseErr strips BuildKit's own location wrappers: our error says
// where already.
func cleanParseErr(err error) error {
	var ui *instructions.UnknownInstructionError
	if errors.As(err, &ui) {
		msg := err.Error() // "unknown instruction: FOO (did you mean COPY?)"
		return errors.New(msg)
	}
	var le *parser.LocationError
	if errors.As(err, &le) {
		return le.Unwrap()
	}
	return err
}

func locate(path, instr string, err error) error {
	var le *parser.LocationError
	line := 0
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		line = le.Locations[0][0].Start.Line
		err = le.Unwrap()
	}
	return &DockerfileError{File: path, Line: line, Instruction: instr, Err: err}
}

// envList is an ordered environment for the shell lexer: later Set calls
// replace earlier values of the same key.
type envList struct {
	keys []string
	vals map[string]string
}

func newEnvList() *envList { return &envList{vals: map[string]string{}} }

func (e *envList) Get(k string) (string, bool) { v, ok := e.vals[k]; return v, ok }
func (e *envList) Keys() []string              { return append([]string(nil), e.keys...) }

func (e *envList) Set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.keys = append(e.keys, k)
	}
	e.vals[k] = v
}

// fromSlice adds "K=V" entries (an image config's Env).
func (e *envList) fromSlice(kvs []string) {
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		e.Set(k, v)
	}
}

// MetaArgs evaluates the ARGs before the first FROM against buildArgs and
// returns their values (what FROM lines and stage ARGs without a default
// see).
func (df *Dockerfile) metaArgs(buildArgs map[string]string) (*envList, error) {
	lex := shell.NewLex(df.Escape)
	env := newEnvList()
	for _, nd := range df.MetaArgs {
		ins, err := instructions.ParseInstruction(nd.n)
		if err != nil {
			return nil, df.errAt(nd, err)
		}
		for _, kv := range ins.(*instructions.ArgCommand).Args {
			if v, ok := buildArgs[kv.Key]; ok {
				env.Set(kv.Key, v)
				continue
			}
			if kv.Value == nil {
				continue
			}
			v, _, err := lex.ProcessWord(*kv.Value, env)
			if err != nil {
				return nil, df.errAt(nd, err)
			}
			env.Set(kv.Key, v)
		}
	}
	return env, nil
}

// Bases returns the expanded FROM argument of every stage that is not
// "scratch" or an earlier stage's name: the images this Dockerfile pulls.
func (df *Dockerfile) Bases(buildArgs map[string]string) ([]string, error) {
	meta, err := df.metaArgs(buildArgs)
	if err != nil {
		return nil, err
	}
	lex := shell.NewLex(df.Escape)
	seen := map[string]bool{}
	var out []string
	names := map[string]bool{}
	for _, s := range df.Stages {
		base, _, err := lex.ProcessWord(s.baseName, meta)
		if err != nil {
			return nil, df.errAt(s.from, err)
		}
		if base == "" {
			return nil, df.errAt(s.from, fmt.Errorf("base image %q expands to an empty name", s.baseName))
		}
		if !names[strings.ToLower(base)] && base != "scratch" && !seen[base] {
			seen[base] = true
			out = append(out, base)
		}
		if s.name != "" {
			names[s.name] = true
		}
	}
	sort.Strings(out)
	return out, nil
}
