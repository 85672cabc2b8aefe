package catalog

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/flowaudit/flowaudit/vocab"
)

// Products returns the products sorted by ID.
func (c *Catalog) Products() []*Product {
	out := make([]*Product, len(c.order))
	for i, id := range c.order {
		out[i] = c.products[id]
	}
	return out
}

// Files returns the files the catalog was read from.
func (c *Catalog) Files() []string { return slices.Clone(c.files) }

// Product returns the product with this ID or alias (case-insensitive).
func (c *Catalog) Product(name string) (*Product, bool) {
	name = strings.ToLower(strings.TrimSpace(name))
	if p, ok := c.products[name]; ok {
		return p, true
	}
	for _, id := range c.order {
		if slices.Contains(c.products[id].Aliases, name) {
			return c.products[id], true
		}
	}
	return nil, false
}

// Resolve parses "PRODUCT[@VERSION]" ("utmstack@11", "usm@5.6.5", "vsos",
// "utmstack"). Without a version it returns the newest release the
// product's documents name (Product.Latest). A version no family covers is
// an error, and so is an edition ("#alienvault"): use ResolveRef for
// references that may name one.
func (c *Catalog) Resolve(ref string) (*Product, Version, error) {
	if _, ed, ok := strings.Cut(ref, "#"); ok {
		return nil, Version{}, fmt.Errorf("%s: edition %q given where none is taken", ref, ed)
	}
	return c.resolve(ref)
}

// ResolveRef parses "PRODUCT[@VERSION][#EDITION]" ("usm@5.6.5#alienvault",
// "usm#alienvault", "utmstack@11") like Resolve, and returns the edition of
// the document the matrix is to follow: the one named, which the family
// for the version must declare, or else the family's default (its newest;
// "" for a family with one document).
func (c *Catalog) ResolveRef(ref string) (*Product, Version, string, error) {
	base, ed, hasEd := strings.Cut(strings.TrimSpace(ref), "#")
	p, v, err := c.resolve(base)
	if err != nil {
		return nil, Version{}, "", err
	}
	f, err := p.Family(v)
	if err != nil {
		return nil, Version{}, "", err
	}
	if !hasEd {
		return p, v, f.DefaultEdition(), nil
	}
	if err := f.checkEdition(p.ID, v, ed); err != nil {
		return nil, Version{}, "", err
	}
	return p, v, ed, nil
}

// checkEdition reports an edition the family does not declare.
func (f *Family) checkEdition(product string, v Version, ed string) error {
	if _, ok := f.Edition(ed); ok {
		return nil
	}
	if len(f.Editions) == 0 {
		return fmt.Errorf("%s@%s has no editions (its family %s follows one document); drop #%s", product, v, f.ID, ed)
	}
	var names []string
	for _, e := range f.Editions {
		names = append(names, e.Name)
	}
	return fmt.Errorf("%s@%s has no edition %q (editions: %s; default %s)", product, v, ed, strings.Join(names, ", "), f.DefaultEdition())
}

func (c *Catalog) resolve(ref string) (*Product, Version, error) {
	name, ver, hasVer := strings.Cut(strings.TrimSpace(ref), "@")
	p, ok := c.Product(name)
	if !ok {
		ids := make([]string, len(c.order))
		copy(ids, c.order)
		return nil, Version{}, fmt.Errorf("unknown product %q (known: %s)", name, strings.Join(ids, ", "))
	}
	if !hasVer || ver == "" || ver == "latest" {
		return p, p.Latest(), nil
	}
	v, err := ParseVersion(ver)
	if err != nil {
		return nil, Version{}, fmt.Errorf("%s: %v", ref, err)
	}
	if _, err := p.Family(v); err != nil {
		return nil, Version{}, err
	}
	return p, v, nil
}

// Merge returns a catalog with the products of all catalogs. A product in
// several catalogs gets the families of all; families of one product must
// not overlap in versions, and a product ID or alias may not name two
// products.
func Merge(cats ...*Catalog) (*Catalog, error) {
	out := &Catalog{products: map[string]*Product{}}
	owner := map[string]string{}
	for _, c := range cats {
		if c == nil {
			continue
		}
		out.files = append(out.files, c.files...)
		for _, id := range c.order {
			src := c.products[id]
			for _, a := range append([]string{src.ID}, src.Aliases...) {
				if o, ok := owner[a]; ok && o != src.ID {
					return nil, fmt.Errorf("%w: product name or alias %q names both %q and %q", ErrInvalid, a, o, src.ID)
				}
				owner[a] = src.ID
			}
			p := out.products[id]
			if p == nil {
				cp := *src
				cp.Aliases = slices.Clone(src.Aliases)
				cp.families = slices.Clone(src.families)
				out.products[id] = &cp
				out.order = append(out.order, id)
				continue
			}
			for _, f := range src.families {
				for _, g := range p.families {
					if f.ID == g.ID || f.Versions.Intersects(g.Versions) {
						return nil, fmt.Errorf("%w: %s: family %q of product %q overlaps family %q from %s", ErrInvalid, f.Source, f.ID, id, g.ID, g.Source)
					}
				}
				p.families = append(p.families, f)
			}
			for _, a := range src.Aliases {
				if !slices.Contains(p.Aliases, a) {
					p.Aliases = append(p.Aliases, a)
				}
			}
			sort.SliceStable(p.families, func(i, j int) bool { return p.families[i].Latest.Compare(p.families[j].Latest) < 0 })
		}
	}
	sort.Strings(out.order)
	return out, nil
}

// Families returns the product's families, oldest first.
func (p *Product) Families() []*Family { return slices.Clone(p.families) }

// Family returns the family whose version range contains v; the zero
// Version means Latest.
func (p *Product) Family(v Version) (*Family, error) {
	if v.IsZero() {
		v = p.Latest()
	}
	for _, f := range p.families {
		if f.Versions.Contains(v) {
			return f, nil
		}
	}
	var rs []string
	for _, f := range p.families {
		rs = append(rs, fmt.Sprintf("%s %q", f.ID, f.Versions.String()))
	}
	return nil, fmt.Errorf("%s has no catalog for version %s (families: %s)", p.ID, v, strings.Join(rs, ", "))
}

// Latest returns the newest release any family's documents name.
func (p *Product) Latest() Version {
	var v Version
	for _, f := range p.families {
		if f.Latest.Compare(v) > 0 {
			v = f.Latest
		}
	}
	return v
}

// Roles returns the role names of all families, in declaration order
// (newest family first), without duplicates.
func (p *Product) Roles() []string {
	var out []string
	for i := len(p.families) - 1; i >= 0; i-- {
		for _, r := range p.families[i].Roles {
			if !slices.Contains(out, r.Name) {
				out = append(out, r.Name)
			}
		}
	}
	return out
}

// Conditions returns the conditions of all families (newest family's
// description wins), in declaration order.
func (p *Product) Conditions() []ConditionInfo {
	var out []ConditionInfo
	seen := map[string]bool{}
	for i := len(p.families) - 1; i >= 0; i-- {
		for _, c := range p.families[i].Conditions {
			if !seen[c.Name] {
				seen[c.Name] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// Zones returns the zone placeholders of all families, in declaration
// order.
func (p *Product) Zones() []string {
	var out []string
	for i := len(p.families) - 1; i >= 0; i-- {
		for _, z := range p.families[i].Zones {
			if !slices.Contains(out, z.Name) {
				out = append(out, z.Name)
			}
		}
	}
	return out
}

// Role returns a role of the family.
func (f *Family) Role(name string) (RoleInfo, bool) {
	for _, r := range f.Roles {
		if r.Name == name {
			return r, true
		}
	}
	return RoleInfo{}, false
}

// RoleNames returns the family's role names in declaration order.
func (f *Family) RoleNames() []string {
	out := make([]string, len(f.Roles))
	for i, r := range f.Roles {
		out[i] = r.Name
	}
	return out
}

// Rules returns every rule of the family as written and mirrored (all
// versions, all conditions), in file order by role.
func (f *Family) Rules() []Rule {
	var out []Rule
	for _, r := range f.Roles {
		out = append(out, f.rules[r.Name]...)
	}
	return out
}

// Effective returns the port matrix of role for release v (zero: Latest)
// with the conditions in conds switched on (true) or off (false; also the
// default for conditions not in conds). An unknown role or condition is an
// error.
//
// The matrix has the rules in force for v, plus the rules deprecated at v
// (Deprecated set, Requirement Optional), whose condition holds. A
// composite role (All-in-One) gets its own rules and those of the roles it
// includes, except rules between two different included roles (internal
// traffic); a rule of an included role whose peer is that same role
// (another appliance of its kind, e.g. an HA standby) stays as it is.
// Rules that allow the same traffic as one already in the matrix are
// dropped, the composite's own rules winning.
//
// A family with several editions of its document gets the matrix of its
// default edition (the newest); EffectiveEdition chooses another.
func (p *Product) Effective(v Version, role string, conds map[string]bool) (*Matrix, error) {
	return p.EffectiveEdition(v, "", role, conds)
}

// EffectiveEdition is Effective for the matrix following one edition of
// the family's document ("" for the default): rules restricted to other
// editions are left out. An edition the family does not declare is an
// error.
func (p *Product) EffectiveEdition(v Version, edition, role string, conds map[string]bool) (*Matrix, error) {
	if v.IsZero() {
		v = p.Latest()
	}
	f, err := p.Family(v)
	if err != nil {
		return nil, err
	}
	if edition == "" {
		edition = f.DefaultEdition()
	} else if err := f.checkEdition(p.ID, v, edition); err != nil {
		return nil, err
	}
	ri, ok := f.Role(role)
	if !ok {
		return nil, fmt.Errorf("%s@%s has no role %q (roles: %s)", p.ID, v, role, strings.Join(f.RoleNames(), ", "))
	}
	var on []string
	for name, val := range conds {
		if !slices.ContainsFunc(f.Conditions, func(c ConditionInfo) bool { return c.Name == name }) {
			var names []string
			for _, c := range f.Conditions {
				names = append(names, c.Name)
			}
			if len(names) == 0 {
				names = []string{"none"}
			}
			return nil, fmt.Errorf("%s@%s has no condition %q (conditions: %s)", p.ID, v, name, strings.Join(names, ", "))
		}
		if val {
			on = append(on, name)
		}
	}
	sort.Strings(on)
	holds := func(c string) bool {
		if c == "" {
			return true
		}
		if neg, ok := strings.CutPrefix(c, "!"); ok {
			return !conds[neg]
		}
		return conds[c]
	}
	pick := func(r Rule) (Rule, bool) {
		if !holds(r.Condition) {
			return r, false
		}
		if len(r.Editions) > 0 && !slices.Contains(r.Editions, edition) {
			return r, false
		}
		switch {
		case r.inForce.Contains(v):
		case r.hasDepr && r.deprecated.Contains(v):
			r.Deprecated = true
			r.Requirement = Optional
		default:
			return r, false
		}
		r.SeeAlso = slices.Clone(r.SeeAlso)
		r.Protos = slices.Clone(r.Protos)
		r.Ports = slices.Clone(r.Ports)
		r.Editions = slices.Clone(r.Editions)
		return r, true
	}

	m := &Matrix{Product: p.ID, ProductName: p.Name, Version: v.String(), Family: f.ID, Edition: edition, Role: role, Conditions: on, Rules: []Rule{}}
	seen := map[string]bool{}
	add := func(r Rule) {
		k := ruleKey(r)
		if seen[k] {
			return
		}
		seen[k] = true
		m.Rules = append(m.Rules, r)
	}
	for _, r := range f.rules[role] {
		if r, ok := pick(r); ok {
			add(r)
		}
	}
	for _, inc := range ri.Includes {
		for _, r := range f.rules[inc] {
			// Traffic between two different included roles is internal.
			// A peer of the rule's own role (another appliance of that
			// kind: an HA standby, a forwarding Server) stays.
			if r.Peer.Kind == PeerRole && r.Peer.Role != inc && slices.Contains(ri.Includes, r.Peer.Role) {
				continue
			}
			if r, ok := pick(r); ok {
				add(r)
			}
		}
	}
	SortRules(m.Rules)
	return m, nil
}

// ruleKey identifies the traffic a rule allows, for dropping duplicates
// that a composite role gets from several included roles.
func ruleKey(r Rule) string {
	return fmt.Sprintf("%s|%s|%s|%s|%s|%v", r.Direction, r.ProtoString(), r.PortString(), r.Peer, r.Condition, r.Deprecated)
}

// SortRules orders rules for display: inbound first, then by protocol,
// lowest port, peer and ID.
func SortRules(rules []Rule) {
	sort.SliceStable(rules, func(i, j int) bool {
		a, b := rules[i], rules[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		pa, pb := firstPort(a), firstPort(b)
		if pa != pb {
			return pa < pb
		}
		if a.Protos[0] != b.Protos[0] {
			return a.Protos[0] < b.Protos[0]
		}
		if len(a.Protos) != len(b.Protos) {
			return len(a.Protos) < len(b.Protos)
		}
		if a.Peer.String() != b.Peer.String() {
			return a.Peer.String() < b.Peer.String()
		}
		return a.ID < b.ID
	})
}

func firstPort(r Rule) int {
	if len(r.Ports) == 0 {
		return -1
	}
	return int(r.Ports[0].Lo)
}

// Find returns the rules of the matrix that match a flow's direction,
// protocol and port (peer not checked: see Site.Contains).
func (m *Matrix) Find(dir vocab.Direction, p vocab.Proto, port uint16) []Rule {
	var out []Rule
	for _, r := range m.Rules {
		if r.Direction == dir && r.Matches(p, port) {
			out = append(out, r)
		}
	}
	return out
}

// ParseConditions turns condition switches as a user types them ("vpn",
// "!vpn", "ha=false") into the map Effective takes. Names are checked by
// Effective, not here.
func ParseConditions(list []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		val := true
		if n, ok := strings.CutPrefix(s, "!"); ok {
			s, val = n, false
		} else if n, v, ok := strings.Cut(s, "="); ok {
			switch strings.ToLower(v) {
			case "true", "on", "yes", "1":
			case "false", "off", "no", "0":
				val = false
			default:
				return nil, fmt.Errorf("condition %q: want NAME, !NAME or NAME=true|false", s)
			}
			s = n
		}
		if !reLowerID.MatchString(s) {
			return nil, fmt.Errorf("bad condition name %q", s)
		}
		if prev, dup := out[s]; dup && prev != val {
			return nil, fmt.Errorf("condition %q switched both on and off", s)
		}
		out[s] = val
	}
	return out, nil
}
