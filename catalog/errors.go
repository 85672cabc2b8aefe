package catalog

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// ErrInvalid is wrapped by every error about a malformed catalog or site
// file, so callers can tell bad input from I/O failures.
var ErrInvalid = errors.New("invalid catalog")

// Error is one problem in a catalog or site file, at a line.
type Error struct {
	File string
	Line int // 1-based; 0 when the problem is not at one place
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return e.File + ": " + e.Msg
}

func (e *Error) Unwrap() error { return ErrInvalid }

// ErrorList is every problem found in one or more files, sorted by file
// and line. Its Error method prints one problem per line.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func (l ErrorList) Unwrap() error { return ErrInvalid }

func (l ErrorList) sorted() ErrorList {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].File != l[j].File {
			return l[i].File < l[j].File
		}
		return l[i].Line < l[j].Line
	})
	return l
}

// errs collects errors for one file.
type errs struct {
	file string
	list ErrorList
}

func (e *errs) add(line int, format string, args ...any) {
	e.list = append(e.list, &Error{File: e.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// yamlDoc is a parsed YAML file with helpers to find the line of any value.
type yamlDoc struct {
	file string
	body ast.Node
}

// parseYAML parses data strictly into v (unknown keys, duplicate keys and
// type mismatches are errors) and returns the AST for line look-ups.
func parseYAML(file string, data []byte, v any) (*yamlDoc, *Error) {
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(file, err)
	}
	var body ast.Node
	n := 0
	for _, d := range f.Docs {
		if d == nil || d.Body == nil {
			continue
		}
		n++
		if body == nil {
			body = d.Body
		}
	}
	switch {
	case n == 0:
		return nil, &Error{File: file, Line: 1, Msg: "empty file"}
	case n > 1:
		return nil, &Error{File: file, Line: 1, Msg: "more than one YAML document"}
	}
	if _, ok := unwrap(body).(*ast.MappingNode); !ok {
		if _, ok := unwrap(body).(*ast.MappingValueNode); !ok {
			return nil, &Error{File: file, Line: line(body), Msg: "top level must be a mapping"}
		}
	}
	if err := yaml.NodeToValue(body, v, yaml.Strict()); err != nil {
		return nil, yamlError(file, err)
	}
	return &yamlDoc{file: file, body: body}, nil
}

var dupKey = strings.NewReplacer("mapping key", "duplicate key", "already defined at", "(first defined at")

// yamlError turns a go-yaml error into file:line: message, naming the
// offending value.
func yamlError(file string, err error) *Error {
	var ye yaml.Error
	if !errors.As(err, &ye) {
		return &Error{File: file, Msg: err.Error()}
	}
	tk := ye.GetToken()
	ln := 0
	if tk != nil {
		ln = tk.Position.Line
	}
	msg := ye.GetMessage()
	var te *yaml.TypeError
	var oe *yaml.OverflowError
	var ue *yaml.UnexpectedNodeTypeError
	switch {
	case strings.Contains(msg, "already defined at"):
		msg = dupKey.Replace(msg)
		if i := strings.LastIndex(msg, "["); i >= 0 {
			// "[2:5]" → "line 2)"
			pos := strings.TrimSuffix(msg[i+1:], "]")
			if l, _, ok := strings.Cut(pos, ":"); ok {
				msg = msg[:i] + "line " + l + ")"
			}
		}
	case strings.HasPrefix(msg, "unknown field"):
		msg = strings.Replace(msg, "unknown field", "unknown key", 1)
	case errors.As(err, &ue):
		msg = fmt.Sprintf("want %s, got %s", nodeKind(ue.Expected), nodeKind(ue.Actual))
		if tk != nil && tk.Value != "" {
			msg += fmt.Sprintf(" (at %q)", tk.Value)
		}
	case errors.As(err, &te):
		val := ""
		if tk != nil {
			val = tk.Value
		}
		msg = fmt.Sprintf("value %q has the wrong type: want %s", val, goTypeName(te.DstType.String()))
	case errors.As(err, &oe):
		msg = fmt.Sprintf("number %s out of range", oe.SrcNum)
	case tk != nil && tk.Value != "" && !strings.Contains(msg, tk.Value):
		msg = fmt.Sprintf("%s (at %q)", msg, tk.Value)
	}
	return &Error{File: file, Line: ln, Msg: msg}
}

func goTypeName(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "catalog."), strings.HasPrefix(t, "struct"):
		return "a mapping"
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "a number"
	}
	return t
}

func nodeKind(t ast.NodeType) string {
	switch t {
	case ast.MappingType, ast.MappingValueType:
		return "a mapping"
	case ast.SequenceType:
		return "a list"
	case ast.StringType, ast.LiteralType:
		return "a string"
	case ast.IntegerType, ast.FloatType:
		return "a number"
	case ast.BoolType:
		return "true or false"
	case ast.NullType:
		return "nothing"
	}
	return t.String()
}

func unwrap(n ast.Node) ast.Node {
	for {
		switch t := n.(type) {
		case *ast.AnchorNode:
			n = t.Value
		case *ast.TagNode:
			n = t.Value
		default:
			return n
		}
	}
}

func line(n ast.Node) int {
	if n == nil {
		return 0
	}
	if tk := n.GetToken(); tk != nil && tk.Position != nil {
		return tk.Position.Line
	}
	return 0
}

// node finds the node at path (string keys and int indexes). It returns the
// deepest node found and whether the whole path was found.
func (d *yamlDoc) node(path ...any) (ast.Node, bool) {
	n := d.body
	for _, p := range path {
		var next ast.Node
		switch key := p.(type) {
		case string:
			for _, mv := range mappingValues(n) {
				if k, ok := mv.Key.(ast.Node); ok && scalarString(k) == key {
					next = mv.Value
					if _, isNull := unwrap(next).(*ast.NullNode); isNull || next == nil {
						next = mv.Key
					}
					break
				}
			}
		case int:
			if s, ok := unwrap(n).(*ast.SequenceNode); ok && key < len(s.Values) {
				next = s.Values[key]
			}
		}
		if next == nil {
			return n, false
		}
		n = next
	}
	return n, true
}

// line returns the line of the value at path, or of the nearest enclosing
// node that exists.
func (d *yamlDoc) line(path ...any) int {
	n, _ := d.node(path...)
	return d.lineOf(n)
}

// keyLine returns the line of the key at path (the last element must be a
// string), falling back to line.
func (d *yamlDoc) keyLine(path ...any) int {
	if len(path) == 0 {
		return d.line()
	}
	parent, ok := d.node(path[:len(path)-1]...)
	if key, isStr := path[len(path)-1].(string); ok && isStr {
		for _, mv := range mappingValues(parent) {
			if k, ok := mv.Key.(ast.Node); ok && scalarString(k) == key {
				return line(k)
			}
		}
	}
	return d.line(path...)
}

// lineOf returns the line where n starts; for a mapping, the line of its
// first key (a sequence item "- id: x" starts there).
func (d *yamlDoc) lineOf(n ast.Node) int {
	if mvs := mappingValues(n); len(mvs) > 0 {
		if k, ok := mvs[0].Key.(ast.Node); ok {
			return line(k)
		}
	}
	if s, ok := unwrap(n).(*ast.SequenceNode); ok && len(s.Values) > 0 {
		return d.lineOf(s.Values[0])
	}
	return line(unwrap(n))
}

// keys returns the keys of the mapping at path with their lines, in order.
func (d *yamlDoc) keys(path ...any) []keyPos {
	n, ok := d.node(path...)
	if !ok {
		return nil
	}
	var out []keyPos
	for _, mv := range mappingValues(n) {
		if k, ok := mv.Key.(ast.Node); ok {
			out = append(out, keyPos{scalarString(k), line(k)})
		}
	}
	return out
}

type keyPos struct {
	key  string
	line int
}

func mappingValues(n ast.Node) []*ast.MappingValueNode {
	switch t := unwrap(n).(type) {
	case *ast.MappingNode:
		return t.Values
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{t}
	}
	return nil
}

func scalarString(n ast.Node) string {
	switch t := unwrap(n).(type) {
	case *ast.MappingKeyNode:
		return scalarString(t.Value)
	case *ast.StringNode:
		return t.Value
	case ast.ScalarNode:
		return fmt.Sprint(t.GetValue())
	}
	return n.String()
}
