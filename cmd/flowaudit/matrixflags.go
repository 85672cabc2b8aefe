package main

import (
	"fmt"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/catalog"
)

// matrixFlags select the documented matrix and the site: shared by audit,
// watch and rules.
type matrixFlags struct {
	matrix     string
	role       string
	site       string
	conditions []string
	catalogs   []string
}

func (m *matrixFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&m.matrix, "matrix", "m", "", "product[@version][#edition] of the documented matrix (see flowaudit catalog list)")
	fs.StringVarP(&m.role, "role", "r", "", "role of the audited host in that product (e.g. manager, sensor)")
	fs.StringVar(&m.site, "site", "", "site file binding the matrix's zones and roles to addresses")
	fs.StringSliceVar(&m.conditions, "conditions", nil, "conditions switched on (e.g. vpn,ha); see flowaudit catalog show")
	fs.StringSliceVar(&m.catalogs, "catalog", nil, "extra catalog file(s), merged with the built-in ones")
}

// given reports whether a matrix was asked for.
func (m *matrixFlags) given() bool { return m.matrix != "" }

// resolved is the outcome of matrixFlags.resolve.
type resolved struct {
	cat     *catalog.Catalog
	product *catalog.Product
	version catalog.Version
	matrix  *catalog.Matrix
	site    *catalog.Site
}

func (m *matrixFlags) resolve() (*resolved, error) {
	if m.matrix == "" {
		return nil, usageErrorf("--matrix is required")
	}
	if m.role == "" {
		return nil, usageErrorf("--role is required")
	}
	cat, err := catalog.Builtin()
	if err != nil {
		return nil, fmt.Errorf("built-in catalog: %w", err)
	}
	if len(m.catalogs) > 0 {
		extra, err := catalog.LoadFiles(m.catalogs...)
		if err != nil {
			return nil, err
		}
		if cat, err = catalog.Merge(cat, extra); err != nil {
			return nil, err
		}
	}
	p, v, ed, err := cat.ResolveRef(m.matrix)
	if err != nil {
		return nil, err
	}
	conds, err := catalog.ParseConditions(m.conditions)
	if err != nil {
		return nil, usageErrorf("--conditions: %w", err)
	}
	mx, err := p.EffectiveEdition(v, ed, m.role, conds)
	if err != nil {
		return nil, err
	}
	r := &resolved{cat: cat, product: p, version: v, matrix: mx}
	if m.site != "" {
		s, err := catalog.LoadSite(m.site)
		if err != nil {
			return nil, err
		}
		if err := s.Check(p, v); err != nil {
			return nil, err
		}
		// Configurable ports the site gives (USM VPN, VSOS proxies).
		if err := s.ApplyPorts(p, mx); err != nil {
			return nil, err
		}
		r.site = s
	}
	return r, nil
}

// noSiteWarning is what audit and watch say, loudly, when no site file is
// given: no zone and no role is bound to an address, so nothing checks a
// peer, and traffic on documented ports is unverified.
const noSiteWarning = "NO SITE FILE (--site): the matrix's zones and roles are bound to no address, so no peer is checked " +
	"against its zone. Traffic on a documented port is reported as unverified, never as out of zone; traffic that only a " +
	"broad documented range covers is an unverified-flow finding. Give --site to audit the peers."

// warnNoSite logs noSiteWarning when r has no site.
func warnNoSite(e *env, r *resolved) {
	if r.site != nil {
		return
	}
	var zones, roles []string
	if f := r.matrix; f != nil {
		seen := map[string]bool{}
		for _, rule := range f.Rules {
			switch {
			case rule.Peer.Kind == catalog.PeerZone && !seen["z"+rule.Peer.Zone]:
				seen["z"+rule.Peer.Zone] = true
				zones = append(zones, rule.Peer.Zone)
			case rule.Peer.Kind == catalog.PeerRole && !seen["r"+rule.Peer.Role]:
				seen["r"+rule.Peer.Role] = true
				roles = append(roles, rule.Peer.Role)
			}
		}
	}
	e.log.Warn(noSiteWarning, zap.Strings("unbound zones", zones), zap.Strings("unbound roles", roles))
}
