package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The configuration file (--config FILE, docs/CONFIG.md): YAML, a
// top-level log-format and log-level, and a section per subcommand that
// takes --config (audit, record, watch) whose keys are that subcommand's
// long flag names:
//
//	log-format: json
//	watch:
//	  iface: [eth0]
//	  matrix: utmstack@11
//	  interval: 1m
//
// Strict: an unknown key, a list for a one-value flag, a mapping, an empty
// value or a value the flag refuses is an error naming the file and line.
// Every section is checked, not only the running subcommand's. A flag
// given on the command line wins over the file; a list on the command line
// replaces the file's list.

var dupKeyRE = regexp.MustCompile(`mapping key (".*") already defined at \[(\d+):\d+\]`)

// configEntry is one key: value of the file.
type configEntry struct {
	line   int
	key    string
	values []string
	list   bool // given as a YAML sequence
}

// configFile is a parsed configuration file.
type configFile struct {
	path     string
	global   []configEntry            // log-format, log-level
	sections map[string][]configEntry // by subcommand name
}

// configGlobalKeys are the top-level keys that are not sections: the root's
// persistent flags.
var configGlobalKeys = []string{"log-format", "log-level"}

// configSections are the subcommands that take --config.
func configSections() []string {
	var s []string
	for n, c := range commands {
		if c.config {
			s = append(s, n)
		}
	}
	sort.Strings(s)
	return s
}

// loadConfig parses path; it checks the shape and the keys' names (not
// yet the values: check does).
func loadConfig(path string) (*configFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf := &configFile{path: path, sections: map[string][]configEntry{}}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) && ye.GetToken() != nil && ye.GetToken().Position != nil {
			msg := ye.GetMessage()
			// go-yaml: `mapping key "x" already defined at [2:3]`.
			if m := dupKeyRE.FindStringSubmatch(msg); m != nil {
				msg = fmt.Sprintf("duplicate key %s (first at line %s)", m[1], m[2])
			}
			return nil, fmt.Errorf("%s:%d: %s", path, ye.GetToken().Position.Line, msg)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var body ast.Node
	for _, d := range f.Docs {
		if d == nil || d.Body == nil {
			continue
		}
		if _, ok := d.Body.(*ast.CommentGroupNode); ok {
			continue
		}
		if body != nil {
			return nil, fmt.Errorf("%s:%d: more than one YAML document", path, nodeLine(d.Body))
		}
		body = d.Body
	}
	if body == nil {
		return cf, nil // empty: nothing set
	}
	top, err := configMapping(path, body, "the top level")
	if err != nil {
		return nil, err
	}
	sections := configSections()
	seen := map[string]int{}
	for _, mv := range top {
		key, kl, err := configKey(path, mv, seen)
		if err != nil {
			return nil, err
		}
		switch {
		case contains(configGlobalKeys, key):
			e, err := configValue(path, key, kl, mv.Value)
			if err != nil {
				return nil, err
			}
			cf.global = append(cf.global, e)
		case contains(sections, key):
			vals, err := configMapping(path, mv.Value, "section "+key)
			if err != nil {
				return nil, err
			}
			sseen := map[string]int{}
			for _, smv := range vals {
				k, l, err := configKey(path, smv, sseen)
				if err != nil {
					return nil, err
				}
				e, err := configValue(path, key+"."+k, l, smv.Value)
				if err != nil {
					return nil, err
				}
				e.key = k
				cf.sections[key] = append(cf.sections[key], e)
			}
		default:
			return nil, fmt.Errorf("%s:%d: unknown key %q (want %s)", path, kl, key,
				strings.Join(append(append([]string{}, configGlobalKeys...), sections...), ", "))
		}
	}
	return cf, nil
}

// check validates every section against the flags of a fresh command tree
// (so that a mistake in the watch section fails audit --config too).
func (cf *configFile) check() error {
	fresh := newCLI(io.Discard, io.Discard).root
	if err := cf.apply(fresh.PersistentFlags(), cf.global); err != nil {
		return err
	}
	for _, name := range configSections() {
		cmd, _, err := fresh.Find([]string{name})
		if err != nil || cmd == fresh {
			return fmt.Errorf("config: no command %s", name)
		}
		if err := cf.apply(cmd.Flags(), cf.sections[name]); err != nil {
			return err
		}
	}
	return nil
}

// apply sets the flags of fs from entries, except those already given on
// the command line.
func (cf *configFile) apply(fs *pflag.FlagSet, entries []configEntry) error {
	for _, e := range entries {
		f := fs.Lookup(e.key)
		if f == nil || e.key == "config" || e.key == "help" {
			return fmt.Errorf("%s:%d: unknown key %q: not a flag of this command (keys are long flag names, see --help)", cf.path, e.line, e.key)
		}
		if f.Changed {
			continue
		}
		sv, isSlice := f.Value.(pflag.SliceValue)
		var err error
		switch {
		case e.list && !isSlice:
			err = fmt.Errorf("a list, but --%s takes one value", e.key)
		case e.list:
			// Each element as one value: parse it as the flag would.
			err = sv.Replace(nil)
			for _, v := range e.values {
				if err == nil {
					err = f.Value.Set(v)
				}
			}
			f.Changed = true
		default:
			err = fs.Set(e.key, e.values[0])
		}
		if err != nil {
			return fmt.Errorf("%s:%d: %s %q: %w", cf.path, e.line, e.key, strings.Join(e.values, ","), err)
		}
	}
	return nil
}

// applyConfigFile reads path, checks it whole and sets the global flags
// and the flags of cmd that the command line did not give.
func applyConfigFile(path string, root, cmd *cobra.Command) error {
	cf, err := loadConfig(path)
	if err != nil {
		return err
	}
	if err := cf.check(); err != nil {
		return err
	}
	if err := cf.apply(root.PersistentFlags(), cf.global); err != nil {
		return err
	}
	return cf.apply(cmd.Flags(), cf.sections[cmd.Name()])
}

func configMapping(path string, n ast.Node, what string) ([]*ast.MappingValueNode, error) {
	switch t := n.(type) {
	case *ast.MappingNode:
		return t.Values, nil
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{t}, nil
	case *ast.NullNode:
		return nil, nil // "watch:" with nothing under it
	}
	return nil, fmt.Errorf("%s:%d: %s must be a mapping of keys to values", path, nodeLine(n), what)
}

func configKey(path string, mv *ast.MappingValueNode, seen map[string]int) (string, int, error) {
	l := nodeLine(mv.Key)
	k, ok := scalar(mv.Key)
	if !ok {
		return "", l, fmt.Errorf("%s:%d: a key must be a plain name", path, l)
	}
	if first, dup := seen[k]; dup {
		return "", l, fmt.Errorf("%s:%d: duplicate key %q (first at line %d)", path, l, k, first)
	}
	seen[k] = l
	return k, l, nil
}

func configValue(path, key string, keyLine int, n ast.Node) (configEntry, error) {
	e := configEntry{line: keyLine, key: key}
	if s, ok := n.(*ast.SequenceNode); ok {
		e.list = true
		for _, v := range s.Values {
			x, ok := scalar(v)
			if !ok {
				return e, fmt.Errorf("%s:%d: %s: a list of plain values is expected", path, nodeLine(v), key)
			}
			e.values = append(e.values, x)
		}
		return e, nil
	}
	if n != nil {
		if _, null := n.(*ast.NullNode); !null {
			if x, ok := scalar(n); ok {
				e.values = []string{x}
				return e, nil
			}
		}
	}
	return e, fmt.Errorf("%s:%d: %s: a value (or a list) is expected", path, keyLine, key)
}

// scalar is the text of a plain value: a string, number or boolean.
func scalar(n ast.Node) (string, bool) {
	switch t := n.(type) {
	case *ast.MappingKeyNode:
		return scalar(t.Value)
	case *ast.StringNode:
		return t.Value, true
	case *ast.LiteralNode:
		return strings.TrimRight(t.Value.Value, "\n"), true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode:
		if tk := n.GetToken(); tk != nil {
			return tk.Value, true
		}
	}
	return "", false
}

func nodeLine(n ast.Node) int {
	if n == nil {
		return 0
	}
	if tk := n.GetToken(); tk != nil && tk.Position != nil {
		return tk.Position.Line
	}
	return 0
}
