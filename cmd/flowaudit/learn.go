package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/catalog"
)

const learnExamples = `  # A baseline of one appliance no catalog knows: peers widened to the site's zones
  flowaudit catalog learn --product myappliance --site site.yaml sensor=sensor.json --out myappliance.yaml

  # A whole deployment (nodes, roles, addresses, site from the file); other peers to /24 and /64
  flowaudit catalog learn --product mylab --deployment deployment.yaml --aggregate --out mylab.yaml

  # Then audit against the baseline
  flowaudit catalog validate mylab.yaml
  flowaudit audit --deployment deployment.yaml --catalog mylab.yaml --matrix mylab`

const learnUsage = "flowaudit catalog learn --product ID [--site FILE] [--aggregate] (--deployment FILE | ROLE=SNAPSHOT...) [--out FILE]"

func runCatalogLearn(e *env, args []string) error {
	var (
		o       audit.LearnOptions
		site    string
		depPath string
		out     string
	)
	fs := catalogFlagSet(e, "learn", learnUsage, learnExamples)
	fs.StringVar(&o.Product, "product", "", "ID of the product the learned catalog describes (lower-case; not a built-in product's)")
	fs.StringVar(&o.Name, "name", "", "its name (default: the ID)")
	fs.StringVar(&o.Vendor, "vendor", "", "its vendor (default: observed)")
	fs.StringVar(&o.Version, "version", "1", "the release the snapshots show")
	fs.StringVar(&site, "site", "", "site file whose zones and roles peers are widened to (default: the deployment file's)")
	fs.BoolVar(&o.Aggregate, "aggregate", false, "widen peers in no zone or role to their /24 (IPv4) or /64 (IPv6)")
	fs.StringVar(&depPath, "deployment", "", "learn from every node of this deployment file (roles, addresses, snapshots, site)")
	fs.StringVarP(&out, "out", "o", "", "write the catalog to this file (atomically) instead of stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Product == "" {
		return errors.New("catalog learn: --product is required")
	}
	var dep *catalog.Deployment
	switch {
	case depPath != "" && fs.NArg() > 0:
		return errors.New("catalog learn: give --deployment or ROLE=SNAPSHOT arguments, not both")
	case depPath != "":
		d, err := catalog.LoadDeployment(depPath)
		if err != nil {
			return err
		}
		dep = d
	case fs.NArg() == 0:
		return errors.New("catalog learn: no snapshot (give ROLE=SNAPSHOT arguments or --deployment)")
	default:
		dep = &catalog.Deployment{Source: "command line"}
		for _, a := range fs.Args() {
			role, path, ok := strings.Cut(a, "=")
			if !ok || role == "" || path == "" {
				return fmt.Errorf("catalog learn: %q: want ROLE=SNAPSHOT", a)
			}
			dep.Nodes = append(dep.Nodes, catalog.DeploymentNode{Name: strings.TrimSuffix(filepath.Base(path), ".json"), Role: role, Snapshot: path})
		}
	}
	if site != "" {
		s, err := catalog.LoadSite(site)
		if err != nil {
			return err
		}
		o.Site = s
	}
	o.Generated = time.Now()
	data, err := audit.LearnNodes(dep, o, audit.DeploymentOptions{})
	if err != nil {
		return err
	}
	return writeOutput(e, out, func(w io.Writer) error { _, err := w.Write(data); return err },
		"catalog written", zap.String("product", o.Product))
}
