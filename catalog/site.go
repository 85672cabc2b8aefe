package catalog

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"

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
}

var reRole = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

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
		Source:  name,
		lines:   map[string]int{},
	}
	if raw.Product != "" {
		if _, ver, ok := strings.Cut(raw.Product, "@"); ok {
			if _, err := ParseVersion(ver); err != nil {
				e.add(d.line("product"), "product %q: %v", raw.Product, err)
			}
		}
	}
	if raw.Zones == nil && raw.Roles == nil && raw.Hosts == nil && raw.Self == nil {
		e.add(1, "site binds nothing (want zones, roles, hosts or self)")
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

func pathName(path []any) string {
	s := make([]string, len(path))
	for i, p := range path {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ".")
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
		return s.Hosts[strings.ToLower(peer.Host)]
	}
	return nil
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
		return s.lines["hosts/"+strings.ToLower(peer.Host)]
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
	if len(e.list) > 0 {
		return e.list.sorted()
	}
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
