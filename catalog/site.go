package catalog

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"go4.org/netipx"
)

// FormatSite is the value of the optional "format" key of a site file.
const FormatSite = "flowaudit-site/v1"

// Site binds a product's placeholders to one site's addresses: zones
// (ADMIN_IP, AGENT_NETWORK …), roles (the hosts of each role), DNS names
// used as peers (data.alienvault.com …) and the audited host's own
// addresses.
type Site struct {
	// Product optionally names the product the site is for
	// ("utmstack@11"); Check verifies names against it.
	Product string
	Zones   map[string]*netipx.IPSet
	Roles   map[string]*netipx.IPSet
	Hosts   map[string]*netipx.IPSet
	// Self are the audited host's addresses, if given.
	Self *netipx.IPSet
	// Ports overrides the ports of rules, by rule ID, where the site uses
	// another port than the document's default for a port the document
	// calls configurable (USM VPN 33800, VSOS proxy ports). Check
	// validates the IDs against a product; ApplyPorts applies them.
	Ports map[string][]PortRange
	// Source is the file the site was read from.
	Source string

	lines map[string]int // "zones/ADMIN_IP" → line
}

type rawSite struct {
	Format  string         `yaml:"format"`
	Product string         `yaml:"product"`
	Self    any            `yaml:"self"`
	Zones   map[string]any `yaml:"zones"`
	Roles   map[string]any `yaml:"roles"`
	Hosts   map[string]any `yaml:"hosts"`
	Ports   map[string]any `yaml:"ports"`
}

var (
	reRole   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	reRuleID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*){2,3}$`)
)

// LoadSite reads a site file:
//
//	zones:
//	  ADMIN_IP: 192.0.2.10/32
//	  AGENT_NETWORK: [10.0.0.0/8, fd00::/8]
//	roles:
//	  server: [198.51.100.5]
//	hosts:
//	  data.alienvault.com: [203.0.113.7]
//	self: [198.51.100.7]
//	ports:
//	  usm.server.vpn: 33900
//
// Values are an address, a prefix (host bits must be zero), a range
// "a-b", or a list of those. Problems are reported as an ErrorList of
// file:line: message errors.
func LoadSite(path string) (*Site, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read site: %w", err)
	}
	return ParseSite(path, data)
}

// ParseSite is LoadSite from memory; name is used in errors.
func ParseSite(name string, data []byte) (*Site, error) {
	var raw rawSite
	d, perr := parseYAML(name, data, &raw)
	if perr != nil {
		return nil, ErrorList{perr}
	}
	e := &errs{file: name}
	if raw.Format != "" && raw.Format != FormatSite {
		e.add(d.line("format"), "format %q not supported (want %q)", raw.Format, FormatSite)
	}
	s := &Site{
		Product: raw.Product,
		Zones:   map[string]*netipx.IPSet{},
		Roles:   map[string]*netipx.IPSet{},
		Hosts:   map[string]*netipx.IPSet{},
		Ports:   map[string][]PortRange{},
		Source:  name,
		lines:   map[string]int{},
	}
	if raw.Product != "" {
		ref, ed, hasEd := strings.Cut(raw.Product, "#")
		if _, ver, ok := strings.Cut(ref, "@"); ok {
			if _, err := ParseVersion(ver); err != nil {
				e.add(d.line("product"), "product %q: %v", raw.Product, err)
			}
		}
		if hasEd && !reLowerID.MatchString(ed) {
			e.add(d.line("product"), "product %q: bad edition %q", raw.Product, ed)
		}
	}
	if raw.Zones == nil && raw.Roles == nil && raw.Hosts == nil && raw.Self == nil && raw.Ports == nil {
		e.add(1, "site binds nothing (want zones, roles, hosts, self or ports)")
	}
	section := func(key string, m map[string]any, valid func(string) bool, want string, out map[string]*netipx.IPSet) {
		for _, kp := range d.keys(key) {
			name := kp.key
			if !valid(name) {
				e.add(kp.line, "%s %q: %s", strings.TrimSuffix(key, "s"), name, want)
				continue
			}
			set := addrSet(d, e, m[name], key, name)
			if set != nil {
				if key == "hosts" {
					name = strings.ToLower(name)
				}
				out[name] = set
				s.lines[key+"/"+name] = kp.line
			}
		}
	}
	section("zones", raw.Zones, reZone.MatchString, "want upper-case letters, digits and '_' (e.g. ADMIN_IP)", s.Zones)
	section("roles", raw.Roles, reRole.MatchString, "want lower-case letters, digits and '-'", s.Roles)
	section("hosts", raw.Hosts, reDNS.MatchString, "not a DNS name", s.Hosts)
	if raw.Self != nil {
		s.Self = addrSet(d, e, raw.Self, "self")
	}
	for _, kp := range d.keys("ports") {
		id := kp.key
		if !reRuleID.MatchString(id) {
			e.add(kp.line, "port override %q: want a rule ID FAMILY.ROLE.RULE (see flowaudit catalog show)", id)
			continue
		}
		if prs := overridePorts(d, e, id, raw.Ports[id], kp.line); prs != nil {
			s.Ports[id] = prs
			s.lines["ports/"+id] = kp.line
		}
	}
	if len(e.list) > 0 {
		return nil, e.list.sorted()
	}
	return s, nil
}

// addrSet parses an address, prefix, range or list of them at path.
func addrSet(d *yamlDoc, e *errs, v any, path ...any) *netipx.IPSet {
	var b netipx.IPSetBuilder
	ok := true
	one := func(x any, ln int) {
		s, isStr := x.(string)
		if !isStr {
			e.add(ln, "bad address %v (want an address, a CIDR or a range a-b)", x)
			ok = false
			return
		}
		s = strings.TrimSpace(s)
		if strings.Contains(s, "-") {
			r, err := netipx.ParseIPRange(s)
			if err != nil {
				e.add(ln, "bad address range %q", s)
				ok = false
				return
			}
			b.AddRange(r)
			return
		}
		p, err := parsePrefix(s)
		if err != nil {
			e.add(ln, "%v", err)
			ok = false
			return
		}
		b.AddPrefix(p)
	}
	switch t := v.(type) {
	case nil:
		e.add(d.keyLine(path...), "%s: no addresses", pathName(path))
		return nil
	case []any:
		if len(t) == 0 {
			e.add(d.keyLine(path...), "%s: no addresses", pathName(path))
			return nil
		}
		for i, x := range t {
			one(x, d.line(append(path, i)...))
		}
	default:
		one(t, d.line(path...))
	}
	if !ok {
		return nil
	}
	set, err := b.IPSet()
	if err != nil {
		e.add(d.line(path...), "%v", err)
		return nil
	}
	return set
}

// overridePorts parses the ports a site gives a rule: a port, a range
// "lo-hi" or a list of them, as in catalogs, but not "any" nor port 0.
func overridePorts(d *yamlDoc, e *errs, id string, v any, keyLine int) []PortRange {
	label := fmt.Sprintf("port override of %q", id)
	if v == nil {
		e.add(keyLine, "%s: no ports", label)
		return nil
	}
	if l, ok := v.([]any); ok && len(l) == 0 {
		e.add(keyLine, "%s: no ports", label)
		return nil
	}
	// parseRanges asks for the line of "ports" (the value) or of its j-th
	// item; here the value sits at ports.<id>.
	at := func(k ...any) int {
		path := []any{"ports", id}
		if len(k) > 1 {
			path = append(path, k[1:]...)
		}
		return d.line(path...)
	}
	n := len(e.list)
	prs := parseRanges(e, at, "ports", label, v, 65535, "port")
	for _, pr := range prs {
		switch {
		case pr.Lo == 0 && pr.Hi == 65535:
			e.add(at("ports"), "%s: give the port(s), not any", label)
		case pr.Lo == 0:
			e.add(at("ports"), "%s: port 0 is not a service port", label)
		}
	}
	if len(e.list) > n {
		return nil
	}
	return prs
}

func pathName(path []any) string {
	s := make([]string, len(path))
	for i, p := range path {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ".")
}

// LooksLikeSite tells a site file from a catalog file by its top-level
// keys, without decoding it (so an alias bomb costs nothing here): a
// "format" of flowaudit-site/… is a site and any other format a catalog;
// without one, a file with rules, family or documents is a catalog and one
// with zones, hosts, self, ports or a roles mapping is a site.
func LooksLikeSite(data []byte) bool {
	f, err := parser.ParseBytes(data, 0)
	if err != nil || len(f.Docs) == 0 || f.Docs[0] == nil {
		return false
	}
	top := map[string]ast.Node{}
	for _, mv := range mappingValues(f.Docs[0].Body) {
		if k, ok := mv.Key.(ast.Node); ok {
			top[scalarString(k)] = mv.Value
		}
	}
	if v, ok := top["format"]; ok {
		return strings.HasPrefix(scalarString(v), "flowaudit-site/")
	}
	for _, k := range []string{"rules", "family", "documents"} {
		if _, ok := top[k]; ok {
			return false
		}
	}
	for _, k := range []string{"zones", "hosts", "self", "ports"} {
		if _, ok := top[k]; ok {
			return true
		}
	}
	if v, ok := top["roles"]; ok {
		_, isMap := unwrap(v).(*ast.MappingNode)
		if !isMap {
			_, isMap = unwrap(v).(*ast.MappingValueNode)
		}
		return isMap
	}
	return false
}

// Contains reports whether addr is an address of peer at this site. bound
// is false when the site does not bind the peer's zone, role (nor the
// role's fallback zone) or DNS name, so the caller cannot decide. PeerAny
// contains every address; PeerCIDR needs no binding.
func (s *Site) Contains(peer Peer, addr netip.Addr) (ok bool, bound bool) {
	addr = addr.Unmap()
	switch peer.Kind {
	case PeerAny:
		return true, true
	case PeerCIDR:
		return peer.Prefix.Contains(addr), true
	}
	set := s.set(peer)
	if set == nil {
		return false, false
	}
	return set.Contains(addr), true
}

// ContainsPrefix is Contains for every address of p at once: inside when
// all of them are addresses of peer, overlaps when some are. An IPv4
// prefix written in IPv6 form (::ffff:0:0/96 and longer) is unmapped.
func (s *Site) ContainsPrefix(peer Peer, p netip.Prefix) (inside, overlaps, bound bool) {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	switch peer.Kind {
	case PeerAny:
		return true, true, true
	case PeerCIDR:
		return peer.Prefix.Bits() <= p.Bits() && peer.Prefix.Contains(p.Addr()), peer.Prefix.Overlaps(p), true
	}
	set := s.set(peer)
	if set == nil {
		return false, false, false
	}
	return set.ContainsPrefix(p), set.OverlapsPrefix(p), true
}

// set is the addresses the site binds to a zone, role (or the role's
// fallback zone) or DNS peer; nil when it binds none.
func (s *Site) set(peer Peer) *netipx.IPSet {
	switch peer.Kind {
	case PeerRole:
		if set := s.Roles[peer.Role]; set != nil {
			return set
		}
		if peer.Zone != "" {
			return s.Zones[peer.Zone]
		}
	case PeerZone:
		return s.Zones[peer.Zone]
	case PeerDNS:
		return s.Hosts[s.hostKey(peer.Host)]
	}
	return nil
}

// hostKey is the hosts: entry that binds a DNS peer: the name itself, else
// the most specific wildcard ("*.alienvault.com") above it; "" when none.
// A wildcard peer is bound only by the same wildcard.
func (s *Site) hostKey(host string) string {
	host = strings.ToLower(host)
	if _, ok := s.Hosts[host]; ok || strings.HasPrefix(host, "*.") {
		return host
	}
	for rest := host; ; {
		_, after, ok := strings.Cut(rest, ".")
		if !ok || !strings.Contains(after, ".") {
			return ""
		}
		if _, ok := s.Hosts["*."+after]; ok {
			return "*." + after
		}
		rest = after
	}
}

// HostSet is the addresses hosts: binds to a DNS name (through its own
// entry or a wildcard above it); nil when none does.
func (s *Site) HostSet(host string) *netipx.IPSet {
	if s == nil {
		return nil
	}
	return s.Hosts[s.hostKey(host)]
}

// BindsHost reports whether the site's hosts: binds the DNS name (or
// wildcard) statically: it then wins over names learned from DNS.
func (s *Site) BindsHost(host string) bool {
	return s != nil && s.Hosts[s.hostKey(host)] != nil
}

// Line is the line of the site file that binds peer: its role's entry
// (or the role's fallback zone), zone or DNS name; 0 when the site binds
// none (and for "any" and CIDR peers, which need no binding). Reports
// point at it (SARIF locations).
func (s *Site) Line(peer Peer) int {
	switch peer.Kind {
	case PeerRole:
		if l := s.lines["roles/"+peer.Role]; l > 0 {
			return l
		}
		if peer.Zone != "" {
			return s.lines["zones/"+peer.Zone]
		}
	case PeerZone:
		return s.lines["zones/"+peer.Zone]
	case PeerDNS:
		return s.lines["hosts/"+s.hostKey(peer.Host)]
	}
	return 0
}

// IsSelf reports whether addr is one of the audited host's addresses as
// the site file gives them (false when the site gives none).
func (s *Site) IsSelf(addr netip.Addr) bool {
	return s.Self != nil && s.Self.Contains(addr.Unmap())
}

// Check reports the zones and roles the site binds that the product
// family for v does not have, as file:line errors. Hosts are not checked:
// a site may bind DNS names that only a user catalog uses.
func (s *Site) Check(p *Product, v Version) error {
	f, err := p.Family(v)
	if err != nil {
		return err
	}
	e := &errs{file: s.Source}
	zones, roles := map[string]bool{}, map[string]bool{}
	for _, z := range f.Zones {
		zones[z.Name] = true
	}
	for _, r := range f.Roles {
		roles[r.Name] = true
	}
	for _, z := range sortedKeys(s.Zones) {
		if !zones[z] {
			e.add(s.lines["zones/"+z], "zone %q is not a zone of %s@%s%s", z, p.ID, v, known(zones))
		}
	}
	for _, r := range sortedKeys(s.Roles) {
		if !roles[r] {
			e.add(s.lines["roles/"+r], "role %q is not a role of %s@%s%s", r, p.ID, v, known(roles))
		}
	}
	s.portTargets(e, p, v, f)
	if len(e.list) > 0 {
		return e.list.sorted()
	}
	return nil
}

// portTargets checks the site's port overrides against family f and
// returns, for each, the ID of the written rule it changes (an override
// may name a mirrored rule, ".to-server"; it changes the written rule and
// every mirror of it). Overrides of unknown rules or of ports the document
// does not call configurable are errors.
func (s *Site) portTargets(e *errs, p *Product, v Version, f *Family) map[string]string {
	out := map[string]string{}
	if len(s.Ports) == 0 {
		return out
	}
	byID := map[string]Rule{}
	configurable := map[string]bool{}
	for _, r := range f.Rules() {
		byID[r.ID] = r
		if r.Configurable && r.MirrorOf == "" {
			configurable[r.ID] = true
		}
	}
	for _, id := range sortedKeys(s.Ports) {
		ln := s.lines["ports/"+id]
		r, ok := byID[id]
		switch {
		case !ok:
			e.add(ln, "port override: no rule %q in %s@%s (configurable: %s)", id, p.ID, v, strings.TrimSuffix(strings.TrimPrefix(known(configurable), " (known: "), ")"))
		case !r.Configurable:
			e.add(ln, "port override: rule %q (%s/%s) is not configurable: the document does not say its port can be changed", id, r.ProtoString(), r.PortString())
		case len(r.Protos) == 0 || !r.Protos[0].HasPorts():
			e.add(ln, "port override: rule %q (%s) has no ports", id, r.ProtoString())
		default:
			target := r.ID
			if r.MirrorOf != "" {
				target = r.MirrorOf
			}
			out[target] = id
		}
	}
	return out
}

// ApplyPorts replaces the ports of the rules of m (a matrix of product p)
// that the site overrides, recording the document's ports in
// DefaultPorts and the site line in PortsFrom. An override names the
// written rule or one of its mirrors; it changes both. Overrides of rules
// not in m do nothing (a site may serve several roles); overrides of
// unknown or not configurable rules are errors, as in Check.
func (s *Site) ApplyPorts(p *Product, m *Matrix) error {
	if len(s.Ports) == 0 {
		return nil
	}
	v, err := ParseVersion(m.Version)
	if err != nil {
		return err
	}
	f, err := p.Family(v)
	if err != nil {
		return err
	}
	e := &errs{file: s.Source}
	targets := s.portTargets(e, p, v, f)
	if len(e.list) > 0 {
		return e.list.sorted()
	}
	for i := range m.Rules {
		r := &m.Rules[i]
		written := r.ID
		if r.MirrorOf != "" {
			written = r.MirrorOf
		}
		id, ok := targets[written]
		if !ok {
			continue
		}
		if r.DefaultPorts == nil {
			r.DefaultPorts = r.Ports
		}
		r.Ports = slices.Clone(s.Ports[id])
		r.PortsFrom = SourcePos{File: s.Source, Line: s.lines["ports/"+id]}
	}
	SortRules(m.Rules)
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
