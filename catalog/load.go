package catalog

import (
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/flowaudit/flowaudit/vocab"
)

// FormatCatalog is the value of the "format" key of a catalog file.
const FormatCatalog = "flowaudit-catalog/v1"

// The YAML shape of a catalog file. Decoding is strict: any key not here
// is an error. Polymorphic values (proto, ports, types) are decoded as any
// and checked by hand.
type rawFile struct {
	Format     string       `yaml:"format"`
	Product    *rawProduct  `yaml:"product"`
	Family     *rawFamily   `yaml:"family"`
	Documents  []rawDoc     `yaml:"documents"`
	Editions   []rawEdition `yaml:"editions"`
	Roles      []rawRole    `yaml:"roles"`
	Zones      []rawNamed   `yaml:"zones"`
	Conditions []rawNamed   `yaml:"conditions"`
	Profiles   []rawProfile `yaml:"profiles"`
	Readings   []rawReading `yaml:"readings"`
	Rules      []rawRule    `yaml:"rules"`
}

type rawProduct struct {
	ID      string   `yaml:"id"`
	Name    string   `yaml:"name"`
	Vendor  string   `yaml:"vendor"`
	Aliases []string `yaml:"aliases"`
}

type rawFamily struct {
	ID       string `yaml:"id"`
	Title    string `yaml:"title"`
	Versions string `yaml:"versions"`
	Latest   string `yaml:"latest"`
}

type rawDoc struct {
	ID     string `yaml:"id"`
	Title  string `yaml:"title"`
	Source string `yaml:"source"`
	URL    string `yaml:"url"`
}

type rawEdition struct {
	ID          string `yaml:"id"`
	Document    string `yaml:"document"`
	Description string `yaml:"description"`
}

type rawRole struct {
	ID          string   `yaml:"id"`
	Title       string   `yaml:"title"`
	Description string   `yaml:"description"`
	Zone        string   `yaml:"zone"`
	Includes    []string `yaml:"includes"`
}

type rawNamed struct {
	ID          string `yaml:"id"`
	Description string `yaml:"description"`
}

type rawProfile struct {
	ID          string   `yaml:"id"`
	Description string   `yaml:"description"`
	Roles       []string `yaml:"roles"`
}

type rawReading struct {
	ID       string       `yaml:"id"`
	Citation *rawCitation `yaml:"citation"`
}

type rawCitation struct {
	Doc     string `yaml:"doc"`
	Section string `yaml:"section"`
	Quote   string `yaml:"quote"`
	Note    string `yaml:"note"`
}

type rawPeer struct {
	Any  bool   `yaml:"any"`
	Role string `yaml:"role"`
	Zone string `yaml:"zone"`
	CIDR string `yaml:"cidr"`
	DNS  string `yaml:"dns"`
}

type rawRule struct {
	ID           string        `yaml:"id"`
	Role         string        `yaml:"role"`
	Roles        []string      `yaml:"roles"`
	Direction    string        `yaml:"direction"`
	Proto        any           `yaml:"proto"`
	Ports        any           `yaml:"ports"`
	Types        any           `yaml:"types"`
	Peer         *rawPeer      `yaml:"peer"`
	Requirement  string        `yaml:"requirement"`
	Condition    string        `yaml:"condition"`
	Versions     string        `yaml:"versions"`
	Deprecated   string        `yaml:"deprecated"`
	Editions     []string      `yaml:"editions"`
	Configurable bool          `yaml:"configurable"`
	Purpose      string        `yaml:"purpose"`
	Citation     *rawCitation  `yaml:"citation"`
	SeeAlso      []rawCitation `yaml:"see_also"`
}

// ValidID reports whether s is a valid product, family or role ID:
// lower-case letters, digits and '-', not starting with '-'.
func ValidID(s string) bool { return reLowerID.MatchString(s) }

var (
	reLowerID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	reZone    = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	// reDNS: a host name, or a wildcard "*.example.com" (any name below it).
	reDNS  = regexp.MustCompile(`^(?i)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)
	reCond = regexp.MustCompile(`^!?[a-z0-9][a-z0-9-]*$`)
)

// fileResult is what one catalog file yields.
type fileResult struct {
	product     Product
	productLine int
	family      *Family
	familyLine  int
	aliasLines  []int
}

// LoadFiles reads catalog files (the embedded format; see docs/CATALOG.md)
// into a catalog. Every problem in every file is reported, as an ErrorList
// of file:line: message errors. Files of the same product are merged: each
// adds a family, and families must not overlap in versions.
func LoadFiles(paths ...string) (*Catalog, error) {
	var files []namedData
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read catalog: %w", err)
		}
		files = append(files, namedData{p, data})
	}
	return load(files)
}

// LoadFS is LoadFiles for files in an fs.FS; names in errors and rule
// sources are prefix + path.
func LoadFS(fsys fs.FS, prefix string, paths ...string) (*Catalog, error) {
	var files []namedData
	for _, p := range paths {
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("read catalog: %w", err)
		}
		files = append(files, namedData{prefix + p, data})
	}
	return load(files)
}

// Parse reads one catalog from memory; name is used in errors.
func Parse(name string, data []byte) (*Catalog, error) {
	return load([]namedData{{name, data}})
}

type namedData struct {
	name string
	data []byte
}

func load(files []namedData) (*Catalog, error) {
	var list ErrorList
	var results []*fileResult
	for _, f := range files {
		r, el := parseFile(f.name, f.data)
		list = append(list, el...)
		if r != nil {
			results = append(results, r)
		}
	}
	c := &Catalog{products: map[string]*Product{}}
	for _, f := range files {
		c.files = append(c.files, f.name)
	}
	aliasOwner := map[string]string{}
	for _, r := range results {
		e := &errs{file: r.family.Source}
		p := c.products[r.product.ID]
		if p == nil {
			cp := r.product
			p = &cp
			c.products[p.ID] = p
		} else {
			if r.product.Name != p.Name || r.product.Vendor != p.Vendor {
				e.add(r.productLine, "product %q: name/vendor %q/%q differ from %q/%q in %s", p.ID, r.product.Name, r.product.Vendor, p.Name, p.Vendor, p.families[0].Source)
			}
			for _, a := range r.product.Aliases {
				if !slices.Contains(p.Aliases, a) {
					p.Aliases = append(p.Aliases, a)
				}
			}
		}
		for i, a := range append([]string{r.product.ID}, r.product.Aliases...) {
			if o, ok := aliasOwner[a]; ok && o != r.product.ID {
				ln := r.productLine
				if i > 0 {
					ln = r.aliasLines[i-1]
				}
				e.add(ln, "product name or alias %q already used by product %q", a, o)
				continue
			}
			aliasOwner[a] = r.product.ID
		}
		for _, f := range p.families {
			if f.ID == r.family.ID {
				e.add(r.familyLine, "family %q of product %q already defined in %s", f.ID, p.ID, f.Source)
			} else if f.Versions.Intersects(r.family.Versions) {
				e.add(r.familyLine, "family %q versions %q overlap family %q (%q) in %s", r.family.ID, r.family.Versions.String(), f.ID, f.Versions.String(), f.Source)
			}
		}
		p.families = append(p.families, r.family)
		list = append(list, e.list...)
	}
	if len(list) > 0 {
		return nil, list.sorted()
	}
	for id, p := range c.products {
		sort.SliceStable(p.families, func(i, j int) bool { return p.families[i].Latest.Compare(p.families[j].Latest) < 0 })
		c.order = append(c.order, id)
	}
	sort.Strings(c.order)
	return c, nil
}

// parseFile parses and checks one catalog file.
func parseFile(name string, data []byte) (*fileResult, ErrorList) {
	var raw rawFile
	d, perr := parseYAML(name, data, &raw)
	if perr != nil {
		return nil, ErrorList{perr}
	}
	e := &errs{file: name}
	// Required top-level keys.
	for _, k := range []string{"format", "product", "family", "documents", "roles", "rules"} {
		if _, ok := d.node(k); !ok {
			e.add(1, "missing required key %q", k)
		}
	}
	if len(e.list) > 0 {
		return nil, e.list
	}
	if raw.Format != FormatCatalog {
		e.add(d.line("format"), "format %q not supported (want %q)", raw.Format, FormatCatalog)
	}
	res := &fileResult{productLine: d.keyLine("product"), familyLine: d.keyLine("family")}

	// Product.
	rp := raw.Product
	if rp == nil {
		rp = &rawProduct{}
	}
	if !reLowerID.MatchString(rp.ID) {
		e.add(d.line("product", "id"), "product id %q: want lower-case letters, digits and '-'", rp.ID)
	}
	if rp.Name == "" {
		e.add(d.line("product"), "product %q: missing name", rp.ID)
	}
	for i, a := range rp.Aliases {
		res.aliasLines = append(res.aliasLines, d.line("product", "aliases", i))
		if !reLowerID.MatchString(a) {
			e.add(d.line("product", "aliases", i), "alias %q: want lower-case letters, digits and '-'", a)
		}
	}
	res.product = Product{ID: rp.ID, Name: rp.Name, Vendor: rp.Vendor, Aliases: rp.Aliases}

	// Family.
	rf := raw.Family
	if rf == nil {
		rf = &rawFamily{}
	}
	fam := &Family{ID: rf.ID, Title: rf.Title, Source: name, rules: map[string][]Rule{}}
	res.family = fam
	if !reLowerID.MatchString(rf.ID) {
		e.add(d.line("family", "id"), "family id %q: want lower-case letters, digits and '-'", rf.ID)
	}
	if r, err := ParseRange(rf.Versions); err != nil {
		e.add(d.line("family", "versions"), "%v", err)
	} else {
		fam.Versions = r
	}
	if rf.Latest == "" {
		e.add(d.line("family"), "family %q: missing latest (the newest release its documents name)", rf.ID)
	} else if v, err := ParseVersion(rf.Latest); err != nil {
		e.add(d.line("family", "latest"), "%v", err)
	} else {
		fam.Latest = v
		if !fam.Versions.Contains(v) {
			e.add(d.line("family", "latest"), "latest %q not in the family's versions %q", rf.Latest, fam.Versions.String())
		}
	}

	// Documents.
	docs := map[string]Document{}
	for i, rd := range raw.Documents {
		ln := d.line("documents", i)
		if rd.ID == "" {
			e.add(ln, "document without id")
			continue
		}
		if _, dup := docs[rd.ID]; dup {
			e.add(ln, "duplicate document %q", rd.ID)
			continue
		}
		if rd.Title == "" {
			e.add(ln, "document %q: missing title", rd.ID)
		}
		switch rd.Source {
		case SourceSeed, SourceUser, SourceObserved:
		case SourceSupplementary:
			if rd.URL == "" {
				e.add(ln, "document %q: a supplementary source needs a url", rd.ID)
			}
		default:
			e.add(d.line("documents", i, "source"), "document %q: unknown source %q (want seed, supplementary, user or observed)", rd.ID, rd.Source)
		}
		doc := Document{ID: rd.ID, Title: rd.Title, Source: rd.Source, URL: rd.URL}
		docs[rd.ID] = doc
		fam.Documents = append(fam.Documents, doc)
	}

	// Editions: each follows a declared document.
	editions := map[string]string{} // edition → document
	for i, ed := range raw.Editions {
		ln := d.line("editions", i)
		switch {
		case !reLowerID.MatchString(ed.ID):
			e.add(ln, "edition %q: want lower-case letters, digits and '-'", ed.ID)
			continue
		case editions[ed.ID] != "":
			e.add(ln, "duplicate edition %q", ed.ID)
			continue
		}
		if _, ok := docs[ed.Document]; !ok {
			ids := map[string]bool{}
			for id := range docs {
				ids[id] = true
			}
			e.add(d.line("editions", i, "document"), "edition %q: unknown document %q%s", ed.ID, ed.Document, known(ids))
		}
		editions[ed.ID] = ed.Document
		fam.Editions = append(fam.Editions, EditionInfo{Name: ed.ID, Document: ed.Document, Description: ed.Description})
	}

	// Zones, conditions.
	zones := map[string]bool{}
	for i, z := range raw.Zones {
		ln := d.line("zones", i)
		switch {
		case !reZone.MatchString(z.ID):
			e.add(ln, "zone %q: want upper-case letters, digits and '_' (e.g. ADMIN_IP)", z.ID)
		case zones[z.ID]:
			e.add(ln, "duplicate zone %q", z.ID)
		default:
			zones[z.ID] = true
			fam.Zones = append(fam.Zones, ZoneInfo{Name: z.ID, Description: z.Description})
		}
	}
	conds := map[string]bool{}
	for i, c := range raw.Conditions {
		ln := d.line("conditions", i)
		switch {
		case !reLowerID.MatchString(c.ID):
			e.add(ln, "condition %q: want lower-case letters, digits and '-'", c.ID)
		case conds[c.ID]:
			e.add(ln, "duplicate condition %q", c.ID)
		default:
			conds[c.ID] = true
			fam.Conditions = append(fam.Conditions, ConditionInfo{Name: c.ID, Description: c.Description})
		}
	}

	// Roles.
	roles := map[string]*RoleInfo{}
	for i, r := range raw.Roles {
		ln := d.line("roles", i)
		switch {
		case !reLowerID.MatchString(r.ID):
			e.add(ln, "role %q: want lower-case letters, digits and '-'", r.ID)
			continue
		case roles[r.ID] != nil:
			e.add(ln, "duplicate role %q", r.ID)
			continue
		}
		if r.Zone != "" && !zones[r.Zone] {
			e.add(d.line("roles", i, "zone"), "role %q: unknown zone %q%s", r.ID, r.Zone, known(zones))
		}
		fam.Roles = append(fam.Roles, RoleInfo{Name: r.ID, Title: r.Title, Description: r.Description, Zone: r.Zone, Includes: r.Includes})
		roles[r.ID] = &fam.Roles[len(fam.Roles)-1]
	}
	// Composite roles: includes must name other, non-composite roles.
	roleSet := map[string]bool{}
	for n := range roles {
		roleSet[n] = true
	}
	for i, r := range raw.Roles {
		for j, inc := range r.Includes {
			ln := d.line("roles", i, "includes", j)
			switch {
			case inc == r.ID:
				e.add(ln, "role %q includes itself", r.ID)
			case roles[inc] == nil:
				e.add(ln, "role %q: includes unknown role %q%s", r.ID, inc, known(roleSet))
			case len(roles[inc].Includes) > 0:
				e.add(ln, "role %q: included role %q is itself composite (one level only)", r.ID, inc)
			}
		}
	}

	// Profiles.
	seenProf := map[string]bool{}
	for i, p := range raw.Profiles {
		ln := d.line("profiles", i)
		if !reLowerID.MatchString(p.ID) {
			e.add(ln, "profile %q: want lower-case letters, digits and '-'", p.ID)
		} else if seenProf[p.ID] {
			e.add(ln, "duplicate profile %q", p.ID)
		}
		seenProf[p.ID] = true
		if len(p.Roles) == 0 {
			e.add(ln, "profile %q: no roles", p.ID)
		}
		for j, r := range p.Roles {
			if !roleSet[r] {
				e.add(d.line("profiles", i, "roles", j), "profile %q: unknown role %q%s", p.ID, r, known(roleSet))
			}
		}
		fam.Profiles = append(fam.Profiles, Profile{Name: p.ID, Description: p.Description, Roles: p.Roles})
	}

	cite := func(label string, c *rawCitation, path ...any) Citation {
		ln := d.line(path...)
		if c == nil {
			e.add(ln, "%smissing citation", label)
			return Citation{}
		}
		doc, ok := docs[c.Doc]
		if !ok {
			ids := map[string]bool{}
			for id := range docs {
				ids[id] = true
			}
			e.add(d.line(append(path, "doc")...), "%scitation of unknown document %q%s", label, c.Doc, known(ids))
		}
		if c.Section == "" {
			e.add(ln, "%scitation of %q: missing section", label, c.Doc)
		}
		return Citation{Doc: c.Doc, Title: doc.Title, Source: doc.Source, URL: doc.URL, Section: c.Section, Quote: c.Quote, Note: c.Note}
	}

	// Readings.
	seenRead := map[string]bool{}
	for i, r := range raw.Readings {
		ln := d.line("readings", i)
		if !reLowerID.MatchString(r.ID) {
			e.add(ln, "reading %q: want lower-case letters, digits and '-'", r.ID)
		} else if seenRead[r.ID] {
			e.add(ln, "duplicate reading %q", r.ID)
		}
		seenRead[r.ID] = true
		c := cite(fmt.Sprintf("reading %q: ", r.ID), r.Citation, "readings", i, "citation")
		if r.Citation != nil && r.Citation.Note == "" {
			e.add(ln, "reading %q: missing note", r.ID)
		}
		fam.Readings = append(fam.Readings, Reading{ID: r.ID, Citation: c, Source: SourcePos{File: name, Line: ln}})
	}

	// Rules.
	ids := map[string]int{} // expanded ID → line
	for i, rr := range raw.Rules {
		rules := parseRule(d, e, fam, i, rr, roles, roleSet, zones, conds, editions, cite)
		for _, r := range rules {
			if prev, dup := ids[r.ID]; dup {
				e.add(r.Source.Line, "duplicate rule id %q (also at line %d)", r.ID, prev)
				continue
			}
			ids[r.ID] = r.Source.Line
			fam.rules[r.Role] = append(fam.rules[r.Role], r)
		}
	}
	if len(e.list) > 0 {
		return nil, e.list
	}
	return res, nil
}

// parseRule checks one written rule and returns it expanded: one rule per
// role, plus the mirrored rule for a peer role.
func parseRule(d *yamlDoc, e *errs, fam *Family, i int, rr rawRule, roles map[string]*RoleInfo, roleSet, zones, conds map[string]bool, editions map[string]string, cite func(string, *rawCitation, ...any) Citation) []Rule {
	at := func(k ...any) int { return d.line(append([]any{"rules", i}, k...)...) }
	ln := at()
	nerr := len(e.list)
	label := fmt.Sprintf("rule %q", rr.ID)
	if !reLowerID.MatchString(rr.ID) {
		e.add(ln, "rule id %q: want lower-case letters, digits and '-'", rr.ID)
	}

	var ruleRoles []string
	switch {
	case rr.Role != "" && len(rr.Roles) > 0:
		e.add(ln, "%s: give either role or roles, not both", label)
	case rr.Role != "":
		ruleRoles = []string{rr.Role}
		if !roleSet[rr.Role] {
			e.add(at("role"), "%s: unknown role %q%s", label, rr.Role, known(roleSet))
		}
	case len(rr.Roles) > 0:
		ruleRoles = rr.Roles
		seen := map[string]bool{}
		for j, r := range rr.Roles {
			if !roleSet[r] {
				e.add(at("roles", j), "%s: unknown role %q%s", label, r, known(roleSet))
			}
			if seen[r] {
				e.add(at("roles", j), "%s: role %q listed twice", label, r)
			}
			seen[r] = true
		}
	default:
		e.add(ln, "%s: missing role (or roles)", label)
	}

	var dir vocab.Direction
	switch rr.Direction {
	case "inbound":
		dir = vocab.Inbound
	case "outbound":
		dir = vocab.Outbound
	case "":
		e.add(ln, "%s: missing direction (inbound or outbound)", label)
	default:
		e.add(at("direction"), "%s: unknown direction %q (want inbound or outbound)", label, rr.Direction)
	}

	protos := parseProtos(e, at, label, rr.Proto)
	var ports []PortRange
	switch {
	case len(protos) > 0:
		ports = parsePorts(e, at, label, protos, rr.Ports, rr.Types)
	case rr.Ports != nil:
		// Still report bad ports when the protocol is bad.
		parseRanges(e, at, "ports", label, rr.Ports, 65535, "port")
	}

	peer := Peer{}
	if rr.Peer == nil {
		e.add(ln, "%s: missing peer", label)
	} else {
		p := rr.Peer
		n := 0
		for _, set := range []bool{p.Any, p.Role != "", p.Zone != "", p.CIDR != "", p.DNS != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			e.add(at("peer"), "%s: peer needs exactly one of any, role, zone, cidr, dns", label)
		}
		switch {
		case p.Any:
			peer.Kind = PeerAny
		case p.Role != "":
			peer.Kind, peer.Role = PeerRole, p.Role
			if r := roles[p.Role]; r == nil {
				e.add(at("peer", "role"), "%s: unknown peer role %q%s", label, p.Role, known(roleSet))
			} else {
				peer.Zone = r.Zone
			}
		case p.Zone != "":
			peer.Kind, peer.Zone = PeerZone, p.Zone
			if !zones[p.Zone] {
				e.add(at("peer", "zone"), "%s: unknown zone %q%s", label, p.Zone, known(zones))
			}
		case p.CIDR != "":
			peer.Kind = PeerCIDR
			pf, err := parsePrefix(p.CIDR)
			if err != nil {
				e.add(at("peer", "cidr"), "%s: %v", label, err)
			}
			peer.Prefix = pf
		case p.DNS != "":
			peer.Kind, peer.Host = PeerDNS, strings.ToLower(p.DNS)
			if !reDNS.MatchString(p.DNS) {
				e.add(at("peer", "dns"), "%s: bad DNS name %q", label, p.DNS)
			}
		}
	}

	req := Required
	switch rr.Requirement {
	case "":
		if rr.Condition != "" {
			req = Conditional
		}
	default:
		r, err := ParseRequirement(rr.Requirement)
		if err != nil {
			e.add(at("requirement"), "%s: %v", label, err)
		}
		req = r
	}
	if rr.Condition != "" {
		name := strings.TrimPrefix(rr.Condition, "!")
		if !reCond.MatchString(rr.Condition) {
			e.add(at("condition"), "%s: bad condition %q (want a name or !name)", label, rr.Condition)
		} else if !conds[name] {
			e.add(at("condition"), "%s: unknown condition %q%s", label, name, known(conds))
		}
	} else if req == Conditional {
		e.add(at("requirement"), "%s: requirement conditional needs a condition", label)
	}

	inForce, depr := Range{}, Range{}
	if rr.Versions != "" {
		r, err := ParseRange(rr.Versions)
		if err != nil {
			e.add(at("versions"), "%s: %v", label, err)
		} else if !r.Intersects(fam.Versions) {
			e.add(at("versions"), "%s: versions %q outside the family's versions %q", label, rr.Versions, fam.Versions.String())
		}
		inForce = r
	}
	if rr.Deprecated != "" {
		r, err := ParseRange(rr.Deprecated)
		switch {
		case err != nil:
			e.add(at("deprecated"), "%s: %v", label, err)
		case rr.Versions == "":
			e.add(at("deprecated"), "%s: deprecated %q needs versions (the releases the rule is in force for)", label, rr.Deprecated)
		case r.Intersects(inForce):
			e.add(at("deprecated"), "%s: deprecated %q overlaps versions %q", label, rr.Deprecated, rr.Versions)
		}
		depr = r
	}
	if strings.TrimSpace(rr.Purpose) == "" {
		e.add(ln, "%s: missing purpose", label)
	}
	c := cite(label+": ", rr.Citation, "rules", i, "citation")
	var also []Citation
	for j := range rr.SeeAlso {
		also = append(also, cite(label+": see_also: ", &rr.SeeAlso[j], "rules", i, "see_also", j))
	}
	// Editions: known, and the rule cites the document of one of them.
	if rr.Editions != nil {
		switch {
		case len(fam.Editions) == 0:
			e.add(at("editions"), "%s: editions given but the family declares none", label)
		case len(rr.Editions) == 0:
			e.add(at("editions"), "%s: empty editions list (leave it out for every edition)", label)
		}
		names := map[string]bool{}
		for n := range editions {
			names[n] = true
		}
		seen := map[string]bool{}
		citesOne := false
		for j, ed := range rr.Editions {
			doc, ok := editions[ed]
			switch {
			case !ok && len(fam.Editions) > 0:
				e.add(at("editions", j), "%s: unknown edition %q%s", label, ed, known(names))
			case seen[ed]:
				e.add(at("editions", j), "%s: edition %q listed twice", label, ed)
			}
			seen[ed] = true
			if ok && (c.Doc == doc || slices.ContainsFunc(also, func(a Citation) bool { return a.Doc == doc })) {
				citesOne = true
			}
		}
		if len(fam.Editions) > 0 && len(rr.Editions) > 0 && !citesOne && len(e.list) == nerr {
			e.add(at("editions"), "%s: restricted to editions %s but cites none of their documents", label, strings.Join(rr.Editions, ", "))
		}
	}
	if len(e.list) > nerr {
		return nil
	}

	base := Rule{
		Direction: dir, Protos: protos, Ports: ports, Peer: peer,
		Requirement: req, Condition: rr.Condition, Versions: inForce.String(), Editions: rr.Editions,
		Configurable: rr.Configurable, Purpose: strings.TrimSpace(rr.Purpose),
		Citation: c, SeeAlso: also, Source: SourcePos{File: d.file, Line: ln},
		inForce: inForce, deprecated: depr, hasDepr: rr.Deprecated != "",
	}
	sort.Slice(ports, func(a, b int) bool { return ports[a].Lo < ports[b].Lo })
	var out []Rule
	for _, role := range ruleRoles {
		r := base
		r.ID = fam.ID + "." + role + "." + rr.ID
		r.Role = role
		out = append(out, r)
		if peer.Kind == PeerRole {
			m := r
			m.Role = peer.Role
			m.MirrorOf = r.ID
			m.Peer = Peer{Kind: PeerRole, Role: role, Zone: roles[role].Zone}
			if len(ruleRoles) > 1 && m.Requirement != Optional {
				// The peer talks to one of the rule's roles (a
				// master or a probe), not to each: allowed, not
				// expected — while the rule's condition holds, if
				// it has one (Condition is kept).
				m.Requirement = Optional
			}
			if dir == vocab.Inbound {
				m.Direction = vocab.Outbound
				m.ID = fam.ID + "." + peer.Role + "." + rr.ID + ".to-" + role
			} else {
				m.Direction = vocab.Inbound
				m.ID = fam.ID + "." + peer.Role + "." + rr.ID + ".from-" + role
			}
			out = append(out, m)
		}
	}
	return out
}

func parseProtos(e *errs, at func(...any) int, label string, v any) []vocab.Proto {
	var items []string
	var lines []int
	switch t := v.(type) {
	case nil:
		e.add(at(), "%s: missing proto", label)
		return nil
	case string:
		for _, p := range strings.Split(t, "+") {
			items = append(items, strings.TrimSpace(p))
			lines = append(lines, at("proto"))
		}
	case []any:
		for j, x := range t {
			items = append(items, fmt.Sprint(x))
			lines = append(lines, at("proto", j))
		}
	default:
		items = append(items, fmt.Sprint(t))
		lines = append(lines, at("proto"))
	}
	var out []vocab.Proto
	for j, s := range items {
		p, err := parseProto(s)
		if err != nil {
			e.add(lines[j], "%s: %v", label, err)
			continue
		}
		if slices.Contains(out, p) {
			e.add(lines[j], "%s: protocol %q listed twice", label, s)
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil
	}
	// tcp+udp and the like may share ports; ICMP types and portless
	// protocols cannot be mixed with them.
	kind := func(p vocab.Proto) int {
		switch {
		case p.HasPorts():
			return 0
		case p.IsICMP():
			return 1
		}
		return 2
	}
	for _, p := range out[1:] {
		if kind(p) != kind(out[0]) {
			e.add(at("proto"), "%s: cannot combine %s and %s in one rule (ports mean different things)", label, out[0], p)
			return nil
		}
	}
	return out
}

// parseProto is vocab.ParseProto, but rejects names it does not know
// instead of reading them as numbers, and numbers above 255.
func parseProto(s string) (vocab.Proto, error) {
	if s == "" {
		return 0, fmt.Errorf("empty protocol")
	}
	ls := strings.ToLower(s)
	num := strings.TrimPrefix(ls, "ip-")
	if n, err := strconv.Atoi(num); err == nil {
		if n < 0 || n > 255 {
			return 0, fmt.Errorf("protocol number %d out of range 0-255", n)
		}
		return vocab.Proto(n), nil
	}
	p, err := vocab.ParseProto(ls)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q (want tcp, udp, tcp+udp, icmp, icmpv6, gre, esp, ah, sctp or an IP protocol number)", s)
	}
	return p, nil
}

func parsePorts(e *errs, at func(...any) int, label string, protos []vocab.Proto, ports, types any) []PortRange {
	p0 := protos[0]
	switch {
	case p0.HasPorts():
		if types != nil {
			e.add(at("types"), "%s: types are for icmp/icmpv6, not %s", label, p0)
		}
		if ports == nil {
			e.add(at(), "%s: missing ports for %s (use \"any\" if the document gives none)", label, p0)
			return nil
		}
		return parseRanges(e, at, "ports", label, ports, 65535, "port")
	case p0.IsICMP():
		if ports != nil {
			e.add(at("ports"), "%s: %s has no ports; use types", label, p0)
		}
		if types == nil {
			return nil
		}
		rs := parseRanges(e, at, "types", label, types, 255, "ICMP type")
		for i := range rs {
			rs[i] = PortRange{Lo: rs[i].Lo << 8, Hi: rs[i].Hi<<8 | 0xff}
		}
		return rs
	default:
		if ports != nil {
			e.add(at("ports"), "%s: protocol %s has no ports", label, p0)
		}
		if types != nil {
			e.add(at("types"), "%s: types are for icmp/icmpv6, not %s", label, p0)
		}
		return nil
	}
}

func parseRanges(e *errs, at func(...any) int, key, label string, v any, maxv int, what string) []PortRange {
	var out []PortRange
	one := func(x any, ln int) {
		switch t := x.(type) {
		case string:
			s := strings.TrimSpace(t)
			if s == "any" && maxv == 65535 {
				out = append(out, PortRange{0, 65535})
				return
			}
			lo, hi, isRange := strings.Cut(s, "-")
			a, ok1 := number(e, ln, label, what, lo, maxv)
			if !isRange {
				if ok1 {
					out = append(out, PortRange{uint16(a), uint16(a)})
				}
				return
			}
			b, ok2 := number(e, ln, label, what, hi, maxv)
			if ok1 && ok2 {
				if a > b {
					e.add(ln, "%s: %s range %q has lo %d > hi %d", label, what, s, a, b)
					return
				}
				out = append(out, PortRange{uint16(a), uint16(b)})
			}
		case uint64, int64, int, float64:
			a, ok := number(e, ln, label, what, fmt.Sprint(t), maxv)
			if ok {
				out = append(out, PortRange{uint16(a), uint16(a)})
			}
		default:
			e.add(ln, "%s: bad %s %v (want a number, \"lo-hi\" or a list)", label, what, x)
		}
	}
	if list, ok := v.([]any); ok {
		if len(list) == 0 {
			e.add(at(key), "%s: empty %s list", label, key)
		}
		for j, x := range list {
			one(x, at(key, j))
		}
	} else {
		one(v, at(key))
	}
	return out
}

func number(e *errs, ln int, label, what, s string, maxv int) (int, bool) {
	s = strings.TrimSpace(s)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || s == "" {
		e.add(ln, "%s: bad %s %q (want a number or \"lo-hi\")", label, what, s)
		return 0, false
	}
	if f != math.Trunc(f) {
		e.add(ln, "%s: %s %s is not a whole number", label, what, s)
		return 0, false
	}
	if f < 0 || f > float64(maxv) {
		e.add(ln, "%s: %s %s out of range 0-%d", label, what, s, maxv)
		return 0, false
	}
	return int(f), true
}

// parsePrefix parses an address or prefix, rejecting prefixes with host
// bits set; a bare address is a /32 or /128.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad address %q", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad CIDR %q", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("CIDR %q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func known(set map[string]bool) string {
	if len(set) == 0 {
		return " (none declared)"
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return " (known: " + strings.Join(names, ", ") + ")"
}
