package catalog

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

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

// Bounds on what a hostile or broken file can make the loaders report.
const (
	// maxErrorsPerFile is the number of problems reported per file; the
	// rest are summed up in one more line.
	maxErrorsPerFile = 50
	// maxMessageLen bounds one message (it may quote a value from the
	// file); longer ones are clipped.
	maxMessageLen = 1000
)

// sorted sorts the list by file and line and keeps at most
// maxErrorsPerFile problems per file, replacing the rest by one line
// saying how many were left out.
func (l ErrorList) sorted() ErrorList {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].File != l[j].File {
			return l[i].File < l[j].File
		}
		return l[i].Line < l[j].Line
	})
	out := l[:0:0]
	for i := 0; i < len(l); {
		j := i
		for j < len(l) && l[j].File == l[i].File {
			j++
		}
		if n := j - i; n > maxErrorsPerFile {
			out = append(out, l[i:i+maxErrorsPerFile]...)
			out = append(out, &Error{File: l[i].File, Msg: fmt.Sprintf("… and %d more problems (the first %d are shown)", n-maxErrorsPerFile, maxErrorsPerFile)})
		} else {
			out = append(out, l[i:j]...)
		}
		i = j
	}
	return out
}

// clip shortens a message to maxMessageLen bytes (on a rune boundary).
func clip(msg string) string {
	if len(msg) <= maxMessageLen {
		return msg
	}
	cut := maxMessageLen
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes clipped)", msg[:cut], len(msg)-cut)
}

// errs collects errors for one file.
type errs struct {
	file string
	list ErrorList
}

func (e *errs) add(line int, format string, args ...any) {
	e.list = append(e.list, &Error{File: e.file, Line: line, Msg: clip(fmt.Sprintf(format, args...))})
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
	if e := checkAliases(file, f); e != nil {
		return nil, e
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
		return &Error{File: file, Msg: clip(err.Error())}
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
	return &Error{File: file, Line: ln, Msg: clip(msg)}
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

// maxAliasNodes bounds how many YAML nodes alias expansion may add to a
// file. Decoding expands every alias into a copy of its anchor's value, so
// a few hundred bytes of nested anchors ("billion laughs") would otherwise
// decode into gigabytes. The built-in catalogs use aliases to share a
// citation (a few dozen nodes each).
const maxAliasNodes = 10000

// checkAliases counts, before anything is decoded, the nodes alias
// expansion would add to the document and refuses the file when that is
// more than maxAliasNodes. It walks the AST once, remembering the expanded
// size of each anchor when it is defined (an alias can only refer to an
// anchor defined before it), so the check costs the size of the file, not
// of its expansion.
func checkAliases(file string, f *ast.File) *Error {
	c := aliasCounter{file: file, anchors: map[string]int{}}
	for _, d := range f.Docs {
		if d != nil {
			c.size(d.Body)
		}
		if c.err != nil {
			return c.err
		}
	}
	return nil
}

type aliasCounter struct {
	file    string
	anchors map[string]int // anchor name → nodes of its expanded value
	added   int            // nodes added by expanding aliases so far
	err     *Error
}

// size returns the number of nodes n stands for once aliases are expanded,
// saturating above maxAliasNodes (the walk stops at the first alias that
// crosses the bound).
func (c *aliasCounter) size(n ast.Node) int {
	if n == nil || c.err != nil {
		return 0
	}
	const sat = maxAliasNodes + 1
	sum := func(a, b int) int { return min(a+b, sat) }
	switch t := n.(type) {
	case *ast.AnchorNode:
		s := c.size(t.Value)
		if t.Name != nil {
			c.anchors[scalarString(t.Name)] = s
		}
		return s
	case *ast.AliasNode:
		s, ok := 1, false
		if t.Value != nil {
			s, ok = c.anchors[scalarString(t.Value)]
		}
		if !ok {
			return 1 // an unknown anchor: the decoder reports it
		}
		c.added = sum(c.added, s)
		if c.added > maxAliasNodes {
			c.err = &Error{File: c.file, Line: line(t), Msg: fmt.Sprintf(
				"YAML aliases would expand to more than %d nodes (at alias %s); aliases are allowed only for small repeated values",
				maxAliasNodes, clip(strings.TrimSpace(t.String())))}
		}
		return s
	case *ast.TagNode:
		return c.size(t.Value)
	case *ast.MappingKeyNode:
		return c.size(t.Value)
	case *ast.MappingValueNode:
		return sum(1, sum(c.size(t.Key), c.size(t.Value)))
	case *ast.MappingNode:
		s := 1
		for _, v := range t.Values {
			s = sum(s, c.size(v))
		}
		return s
	case *ast.SequenceNode:
		s := 1
		for _, v := range t.Values {
			s = sum(s, c.size(v))
		}
		return s
	case *ast.DocumentNode:
		return c.size(t.Body)
	}
	return 1
}
