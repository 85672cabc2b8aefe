package catalog

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// FormatDeployment is the value of the optional "format" key of a
// deployment file.
const FormatDeployment = "flowaudit-deployment/v1"

// Deployment is a deployment file: the nodes of one product's deployment,
// each with its role, addresses and snapshot, and the matrix, conditions
// and site they are audited against together (flowaudit audit
// --deployment, docs/DEPLOYMENT.md).
type Deployment struct {
	// Matrix is PRODUCT[@VERSION][#EDITION].
	Matrix     string
	Conditions []string
	// Site and Catalogs are paths, relative ones taken from the
	// deployment file's directory.
	Site     string
	Catalogs []string
	// MaxAge: a node snapshot that ended longer ago than this before the
	// audit is too old (0: the auditor's default).
	MaxAge time.Duration
	Nodes  []DeploymentNode
	// Source is the file the deployment was read from.
	Source string
}

// DeploymentNode is one node of a deployment.
type DeploymentNode struct {
	Name string
	Role string
	// Snapshot is a path (relative ones taken from the deployment file's
	// directory) or an http(s) URL.
	Snapshot  string
	Addresses []netip.Addr
	// Line is the line of the node's entry in the deployment file.
	Line int
}

// IsURL reports whether the node's snapshot is an http(s) URL.
func (n DeploymentNode) IsURL() bool {
	return strings.HasPrefix(n.Snapshot, "http://") || strings.HasPrefix(n.Snapshot, "https://")
}

type rawDeployment struct {
	Format     string    `yaml:"format"`
	Matrix     string    `yaml:"matrix"`
	Conditions []string  `yaml:"conditions"`
	Site       string    `yaml:"site"`
	Catalogs   []string  `yaml:"catalogs"`
	MaxAge     string    `yaml:"max_age"`
	Nodes      []rawNode `yaml:"nodes"`
}

type rawNode struct {
	Name      string `yaml:"name"`
	Role      string `yaml:"role"`
	Snapshot  string `yaml:"snapshot"`
	Addresses any    `yaml:"addresses"`
}

var reNodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// LoadDeployment reads a deployment file:
//
//	matrix: utmstack@11
//	conditions: [multi-node]
//	site: site.yaml
//	max_age: 24h
//	nodes:
//	  - name: manager-1
//	    role: manager
//	    snapshot: manager-1.json        # or https://…/manager-1.json
//	    addresses: [192.0.2.10, 2001:db8::10]
//
// The YAML is strict (unknown and duplicate keys are errors); problems are
// an ErrorList of file:line: message errors.
func LoadDeployment(path string) (*Deployment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read deployment: %w", err)
	}
	return ParseDeployment(path, data)
}

// ParseDeployment is LoadDeployment from memory; name is used in errors
// and relative paths are taken from its directory.
func ParseDeployment(name string, data []byte) (*Deployment, error) {
	var raw rawDeployment
	d, perr := parseYAML(name, data, &raw)
	if perr != nil {
		return nil, ErrorList{perr}
	}
	e := &errs{file: name}
	if raw.Format != "" && raw.Format != FormatDeployment {
		e.add(d.line("format"), "format %q not supported (want %q)", raw.Format, FormatDeployment)
	}
	dir := filepath.Dir(name)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	dep := &Deployment{Matrix: raw.Matrix, Conditions: raw.Conditions, Site: rel(raw.Site), Source: name}
	if raw.Matrix == "" {
		e.add(1, "no matrix (want matrix: PRODUCT[@VERSION][#EDITION], see flowaudit catalog list)")
	}
	for _, c := range raw.Catalogs {
		dep.Catalogs = append(dep.Catalogs, rel(c))
	}
	if raw.MaxAge != "" {
		v, err := time.ParseDuration(raw.MaxAge)
		if err != nil || v <= 0 {
			e.add(d.line("max_age"), "max_age %q: want a positive duration such as 24h", raw.MaxAge)
		}
		dep.MaxAge = v
	}
	if len(raw.Nodes) == 0 {
		e.add(d.keyLine("nodes"), "no nodes (want nodes: a list of name, role, snapshot, addresses)")
	}
	names := map[string]int{}
	owner := map[netip.Addr]string{}
	for i, rn := range raw.Nodes {
		ln := d.line("nodes", i)
		n := DeploymentNode{Name: rn.Name, Role: rn.Role, Snapshot: rn.Snapshot, Line: ln}
		switch {
		case rn.Name == "":
			e.add(ln, "node %d: no name", i+1)
		case !reNodeName.MatchString(rn.Name):
			e.add(d.line("nodes", i, "name"), "node name %q: want letters, digits, '.', '_' and '-'", rn.Name)
		case names[rn.Name] > 0:
			e.add(d.line("nodes", i, "name"), "node %q named twice (first at line %d)", rn.Name, names[rn.Name])
		default:
			names[rn.Name] = ln
		}
		if !reRole.MatchString(rn.Role) {
			e.add(d.keyLine("nodes", i, "role"), "node %q: role %q: want a role of the product (lower-case, see flowaudit catalog show)", rn.Name, rn.Role)
		}
		switch {
		case rn.Snapshot == "":
			e.add(d.keyLine("nodes", i, "snapshot"), "node %q: no snapshot (want a path or an http(s) URL)", rn.Name)
		case strings.Contains(rn.Snapshot, "://"):
			u, err := url.Parse(rn.Snapshot)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				e.add(d.line("nodes", i, "snapshot"), "node %q: snapshot %q: only http and https URLs are fetched", rn.Name, rn.Snapshot)
			}
		default:
			n.Snapshot = rel(rn.Snapshot)
		}
		var list []any
		switch v := rn.Addresses.(type) {
		case nil:
		case []any:
			list = v
		default:
			list = []any{v}
		}
		if len(list) == 0 {
			e.add(d.keyLine("nodes", i, "addresses"), "node %q: no addresses (want the node's own addresses, to find its traffic in the other nodes' snapshots)", rn.Name)
		}
		for j, x := range list {
			at := d.line("nodes", i, "addresses", j)
			if _, isList := rn.Addresses.([]any); !isList {
				at = d.line("nodes", i, "addresses")
			}
			s, _ := x.(string)
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				e.add(at, "node %q: bad address %v (want one address, not a prefix)", rn.Name, x)
				continue
			}
			a = a.Unmap()
			if o, dup := owner[a]; dup {
				e.add(at, "node %q: address %s is also node %q's", rn.Name, a, o)
				continue
			}
			owner[a] = rn.Name
			n.Addresses = append(n.Addresses, a)
		}
		dep.Nodes = append(dep.Nodes, n)
	}
	if len(e.list) > 0 {
		return nil, e.list.sorted()
	}
	return dep, nil
}

// Node returns the node that owns addr.
func (d *Deployment) Node(addr netip.Addr) (DeploymentNode, bool) {
	addr = addr.Unmap()
	for _, n := range d.Nodes {
		for _, a := range n.Addresses {
			if a == addr {
				return n, true
			}
		}
	}
	return DeploymentNode{}, false
}

// Check reports roles of the deployment the product family for v does not
// have, at the line of their node.
func (d *Deployment) Check(p *Product, v Version) error {
	f, err := p.Family(v)
	if err != nil {
		return err
	}
	roles := map[string]bool{}
	for _, r := range f.Roles {
		roles[r.Name] = true
	}
	e := &errs{file: d.Source}
	for _, n := range d.Nodes {
		if !roles[n.Role] {
			e.add(n.Line, "node %q: role %q is not a role of %s@%s%s", n.Name, n.Role, p.ID, v, known(roles))
		}
	}
	if len(e.list) > 0 {
		return e.list.sorted()
	}
	return nil
}
