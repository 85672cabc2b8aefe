package audit

import (
	"fmt"
	"strings"

	"github.com/flowaudit/flowaudit/catalog"
)

// LearnNodes reads the snapshot of every node (a path or an http(s) URL,
// as a deployment audit does) and learns a catalog from them
// (Learn). Every snapshot must be read: a baseline that silently
// lacks a node would make its traffic undocumented later. When o.Site is
// nil and dep names a site, that site is used.
func LearnNodes(dep *catalog.Deployment, o LearnOptions, do DeploymentOptions) ([]byte, error) {
	if o.Site == nil && dep.Site != "" {
		s, err := catalog.LoadSite(dep.Site)
		if err != nil {
			return nil, err
		}
		o.Site = s
	}
	var nodes []LearnNode
	var failed []string
	for _, n := range dep.Nodes {
		s, err := loadNodeSnapshot(n, do)
		if err != nil {
			failed = append(failed, fmt.Sprintf("node %s: %v", n.Name, err))
			continue
		}
		nodes = append(nodes, LearnNode{Name: n.Name, Role: n.Role, Addresses: n.Addresses, Source: n.Snapshot, Snapshot: s})
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("cannot learn without every snapshot:\n  %s", strings.Join(failed, "\n  "))
	}
	return Learn(nodes, o)
}
