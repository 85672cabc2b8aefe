package catalog

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a product release such as "11", "5.6.5" or "9.2". Components
// compare numerically and missing components count as zero, so "5.4" and
// "5.4.0" are equal. The zero Version means "not given"; Resolve and
// Effective replace it with the product's latest documented release.
type Version struct {
	s string
	n []uint32
}

// ParseVersion parses one to four dot-separated decimal components, with an
// optional leading "v" ("v11").
func ParseVersion(s string) (Version, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if t == "" {
		return Version{}, fmt.Errorf("empty version")
	}
	parts := strings.Split(t, ".")
	if len(parts) > 4 {
		return Version{}, fmt.Errorf("version %q has more than 4 components", s)
	}
	n := make([]uint32, len(parts))
	for i, p := range parts {
		if p == "" || strings.TrimLeft(p, "0123456789") != "" {
			return Version{}, fmt.Errorf("bad version %q (want numbers separated by dots, e.g. 5.6.5)", s)
		}
		u, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return Version{}, fmt.Errorf("bad version %q: component %q too large", s, p)
		}
		n[i] = uint32(u)
	}
	return Version{s: t, n: n}, nil
}

// MustVersion is ParseVersion for constants; it panics on error.
func MustVersion(s string) Version {
	v, err := ParseVersion(s)
	if err != nil {
		panic(err)
	}
	return v
}

// IsZero reports whether v is the zero Version ("not given").
func (v Version) IsZero() bool { return v.n == nil }

// String returns the version as written (without a leading "v"), or "" for
// the zero Version.
func (v Version) String() string { return v.s }

// Compare returns -1, 0 or +1. The zero Version sorts first.
func (v Version) Compare(o Version) int {
	l := max(len(v.n), len(o.n))
	for i := range l {
		var a, b uint32
		if i < len(v.n) {
			a = v.n[i]
		}
		if i < len(o.n) {
			b = o.n[i]
		}
		switch {
		case a < b:
			return -1
		case a > b:
			return 1
		}
	}
	switch {
	case v.IsZero() && !o.IsZero():
		return -1
	case !v.IsZero() && o.IsZero():
		return 1
	}
	return 0
}

func (v Version) MarshalText() ([]byte, error) { return []byte(v.s), nil }

func (v *Version) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*v = Version{}
		return nil
	}
	p, err := ParseVersion(string(b))
	if err != nil {
		return err
	}
	*v = p
	return nil
}

// Range is a set of versions: the interval given by at most one lower and
// one upper bound. The zero Range contains every version.
//
// Syntax: constraints separated by spaces or commas, each an operator
// (>=, >, <=, <, =) followed by a version: ">=5.1", "<5.6.5",
// ">=11 <12", "=9.2". A bare version means "=": "9.2". "5.1+" means
// ">=5.1" (the notation the USM documents use). "", "*" and "all" mean
// every version.
type Range struct {
	lo, hi         Version
	loIncl, hiIncl bool
	src            string
}

// ParseRange parses the syntax described at Range.
func ParseRange(s string) (Range, error) {
	src := strings.TrimSpace(s)
	r := Range{src: src}
	if src == "" || src == "*" || strings.EqualFold(src, "all") {
		r.src = ""
		return r, nil
	}
	fields := strings.FieldsFunc(src, func(c rune) bool { return c == ' ' || c == ',' || c == '\t' })
	for _, f := range fields {
		op, rest := "", f
		for _, o := range []string{">=", "<=", ">", "<", "="} {
			if strings.HasPrefix(f, o) {
				op, rest = o, f[len(o):]
				break
			}
		}
		if op == "" && strings.HasSuffix(f, "+") {
			op, rest = ">=", strings.TrimSuffix(f, "+")
		}
		if op == "" {
			op = "="
		}
		if rest == "" {
			return Range{}, fmt.Errorf("bad version range %q: operator %q without a version", s, op)
		}
		v, err := ParseVersion(rest)
		if err != nil {
			return Range{}, fmt.Errorf("bad version range %q: %v", s, err)
		}
		setLo := func(incl bool) error {
			if !r.lo.IsZero() {
				return fmt.Errorf("bad version range %q: two lower bounds", s)
			}
			r.lo, r.loIncl = v, incl
			return nil
		}
		setHi := func(incl bool) error {
			if !r.hi.IsZero() {
				return fmt.Errorf("bad version range %q: two upper bounds", s)
			}
			r.hi, r.hiIncl = v, incl
			return nil
		}
		switch op {
		case ">=":
			err = setLo(true)
		case ">":
			err = setLo(false)
		case "<=":
			err = setHi(true)
		case "<":
			err = setHi(false)
		case "=":
			if err = setLo(true); err == nil {
				err = setHi(true)
			}
		}
		if err != nil {
			return Range{}, err
		}
	}
	if r.Empty() {
		return Range{}, fmt.Errorf("bad version range %q: contains no version", s)
	}
	return r, nil
}

// MustRange is ParseRange for constants; it panics on error.
func MustRange(s string) Range {
	r, err := ParseRange(s)
	if err != nil {
		panic(err)
	}
	return r
}

// IsAll reports whether r contains every version.
func (r Range) IsAll() bool { return r.lo.IsZero() && r.hi.IsZero() }

// Contains reports whether v is in r. The zero Version is in no bounded
// range.
func (r Range) Contains(v Version) bool {
	if r.IsAll() {
		return true
	}
	if v.IsZero() {
		return false
	}
	if !r.lo.IsZero() {
		c := v.Compare(r.lo)
		if c < 0 || (c == 0 && !r.loIncl) {
			return false
		}
	}
	if !r.hi.IsZero() {
		c := v.Compare(r.hi)
		if c > 0 || (c == 0 && !r.hiIncl) {
			return false
		}
	}
	return true
}

// Empty reports whether no version can be in r (for example ">=6 <5").
// Versions are treated as dense: ">5 <5.0.0.1" is not considered empty.
func (r Range) Empty() bool {
	if r.lo.IsZero() || r.hi.IsZero() {
		return false
	}
	c := r.lo.Compare(r.hi)
	return c > 0 || (c == 0 && !(r.loIncl && r.hiIncl))
}

// Intersects reports whether some version is in both r and o.
func (r Range) Intersects(o Range) bool {
	x := r
	if !o.lo.IsZero() {
		if x.lo.IsZero() {
			x.lo, x.loIncl = o.lo, o.loIncl
		} else if c := o.lo.Compare(x.lo); c > 0 || (c == 0 && !o.loIncl) {
			x.lo, x.loIncl = o.lo, o.loIncl
		}
	}
	if !o.hi.IsZero() {
		if x.hi.IsZero() {
			x.hi, x.hiIncl = o.hi, o.hiIncl
		} else if c := o.hi.Compare(x.hi); c < 0 || (c == 0 && !o.hiIncl) {
			x.hi, x.hiIncl = o.hi, o.hiIncl
		}
	}
	return !x.Empty()
}

// String returns the range in canonical form: "" for every version,
// "=9.2", ">=5.1", ">=11 <12".
func (r Range) String() string {
	if r.IsAll() {
		return ""
	}
	if !r.lo.IsZero() && r.lo.Compare(r.hi) == 0 && r.loIncl && r.hiIncl {
		return "=" + r.lo.String()
	}
	var parts []string
	if !r.lo.IsZero() {
		op := ">"
		if r.loIncl {
			op = ">="
		}
		parts = append(parts, op+r.lo.String())
	}
	if !r.hi.IsZero() {
		op := "<"
		if r.hiIncl {
			op = "<="
		}
		parts = append(parts, op+r.hi.String())
	}
	return strings.Join(parts, " ")
}

func (r Range) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r *Range) UnmarshalText(b []byte) error {
	p, err := ParseRange(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}
