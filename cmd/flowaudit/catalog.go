package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/flowaudit/flowaudit/catalog"
)

func init() {
	register(&command{
		name:     "catalog",
		summary:  "list, show and validate the documented port matrices; learn one from snapshots",
		examples: catalogExamples,
		subs: []*command{
			{name: "list", summary: "the products, version families, roles and conditions of the catalogs",
				usage: "flowaudit catalog list [--json] [--catalog FILE]...", examples: listExamples, setup: setupCatalogList},
			{name: "show", summary: "the effective port matrix of a product release, per role",
				usage:    "flowaudit catalog show PRODUCT[@VERSION][#EDITION] [--role ROLE] [--conditions C,...] [--json] [--notes]",
				examples: showExamples, setup: setupCatalogShow},
			{name: "validate", summary: "check catalog and site files; errors as FILE:LINE: message",
				usage:    "flowaudit catalog validate [--site] [--product PRODUCT[@VERSION][#EDITION]] FILE...",
				examples: validateExamples, setup: setupCatalogValidate},
			{name: "learn", summary: "write a catalog from what snapshots observed (a baseline, source: observed)",
				usage: learnUsage, examples: learnExamples, run: runCatalogLearn},
		},
	})
}

const catalogExamples = `  # The products, version families and roles the built-in catalog knows
  flowaudit catalog list

  # The effective matrix of a USM Appliance Sensor on 5.4, VPN mode
  flowaudit catalog show usm@5.4 --role sensor --conditions vpn

  # Every role of UTMStack 11 in a multi-node deployment, as JSON
  flowaudit catalog show utmstack@11 --conditions multi-node --json

  # Check a catalog you wrote for another appliance, and a site file
  flowaudit catalog validate my-appliance.yaml site.yaml`

const listExamples = `  flowaudit catalog list
  flowaudit catalog list --catalog my-appliance.yaml --json`

// errInvalidFiles is returned by catalog validate when a file has problems
// (already printed one per line on stderr).
var errInvalidFiles = errors.New("invalid files")

// catalogFlagSet is newFlagSet for an old-style "catalog SUB" (a
// command.run in the catalog's subs).
func catalogFlagSet(e *env, sub, usageLine, examples string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("catalog "+sub, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	summary := ""
	for _, s := range commands["catalog"].subs {
		if s.name == sub {
			summary = s.summary
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "flowaudit catalog %s: %s\n\nUsage: %s\n\nFlags:\n%s", sub, summary, usageLine, fs.FlagUsages())
		if examples != "" {
			fmt.Fprintf(e.stdout, "\nExamples:\n%s\n", strings.TrimRight(examples, "\n"))
		}
	}
	return fs
}

// catalogSource are the flags choosing which catalogs to read.
type catalogSource struct {
	files     []string
	noBuiltin bool
}

func (c *catalogSource) register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.files, "catalog", nil, "extra catalog file(s), merged with the built-in ones")
	fs.BoolVar(&c.noBuiltin, "no-builtin", false, "use only the --catalog files")
}

func (c *catalogSource) load() (*catalog.Catalog, error) {
	var cats []*catalog.Catalog
	if !c.noBuiltin {
		b, err := catalog.Builtin()
		if err != nil {
			return nil, fmt.Errorf("built-in catalog: %w", err)
		}
		cats = append(cats, b)
	} else if len(c.files) == 0 {
		return nil, usageErrorf("--no-builtin needs at least one --catalog file")
	}
	if len(c.files) > 0 {
		u, err := catalog.LoadFiles(c.files...)
		if err != nil {
			return nil, err
		}
		cats = append(cats, u)
	}
	return catalog.Merge(cats...)
}

// --- list ---------------------------------------------------------------

type catalogListFamily struct {
	ID         string                  `json:"id"`
	Title      string                  `json:"title,omitempty"`
	Versions   string                  `json:"versions"`
	Latest     string                  `json:"latest"`
	Source     string                  `json:"source"`
	Documents  []catalog.Document      `json:"documents"`
	Editions   []catalog.EditionInfo   `json:"editions"`
	Roles      []catalog.RoleInfo      `json:"roles"`
	Zones      []catalog.ZoneInfo      `json:"zones"`
	Conditions []catalog.ConditionInfo `json:"conditions"`
	Profiles   []catalog.Profile       `json:"profiles"`
	Readings   []catalog.Reading       `json:"readings"`
	Rules      int                     `json:"rules"`
}

type catalogListProduct struct {
	ID       string              `json:"id"`
	Name     string              `json:"name"`
	Vendor   string              `json:"vendor,omitempty"`
	Aliases  []string            `json:"aliases,omitempty"`
	Latest   string              `json:"latest"`
	Families []catalogListFamily `json:"families"`
}

func setupCatalogList(fs *pflag.FlagSet) runFunc {
	var src catalogSource
	var asJSON bool
	var width int
	src.register(fs)
	fs.BoolVar(&asJSON, "json", false, "write JSON instead of a table")
	fs.IntVar(&width, "width", 0, widthUsage)
	return func(e *env, args []string) error {
		if len(args) > 0 {
			return usageErrorf("unexpected argument %q", args[0])
		}
		cat, err := src.load()
		if err != nil {
			return err
		}
		var out []catalogListProduct
		for _, p := range cat.Products() {
			lp := catalogListProduct{ID: p.ID, Name: p.Name, Vendor: p.Vendor, Aliases: p.Aliases, Latest: p.Latest().String(), Families: []catalogListFamily{}}
			for _, f := range p.Families() {
				lp.Families = append(lp.Families, catalogListFamily{
					ID: f.ID, Title: f.Title, Versions: f.Versions.String(), Latest: f.Latest.String(), Source: f.Source,
					Documents: f.Documents, Editions: catalogNonNil(f.Editions), Roles: f.Roles, Zones: catalogNonNil(f.Zones), Conditions: catalogNonNil(f.Conditions),
					Profiles: catalogNonNil(f.Profiles), Readings: catalogNonNil(f.Readings), Rules: len(f.Rules()),
				})
			}
			out = append(out, lp)
		}
		if asJSON {
			return catalogWriteJSON(e.stdout, out)
		}
		var buf bytes.Buffer
		tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PRODUCT\tVERSIONS\tLATEST\tFAMILY\tROLES\tCONDITIONS\tDOCUMENTS\tEDITIONS")
		for _, p := range out {
			for i := len(p.Families) - 1; i >= 0; i-- {
				f := p.Families[i]
				name := p.ID
				if i != len(p.Families)-1 {
					name = ""
				}
				var roles, conds, docs, eds []string
				for _, r := range f.Roles {
					roles = append(roles, r.Name)
				}
				for _, c := range f.Conditions {
					conds = append(conds, c.Name)
				}
				for _, d := range f.Documents {
					docs = append(docs, catalog.ShortDoc(d.ID))
				}
				for _, ed := range f.Editions {
					eds = append(eds, ed.Name)
				}
				versions := f.Versions
				if versions == "" {
					versions = "all"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, versions, f.Latest, f.ID,
					strings.Join(roles, ","), catalogDash(strings.Join(conds, ",")), strings.Join(docs, ","), catalogDash(strings.Join(eds, ",")))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(&buf, "\nShow a matrix with: flowaudit catalog show PRODUCT[@VERSION][#EDITION] [--role ROLE] [--conditions C,...]")
		fmt.Fprintln(&buf, "(EDITIONS: editions of the family's document, oldest first; a matrix follows the last unless #EDITION names another.)")
		return writeFitted(e, width, buf.String(), func(l string) bool { return strings.HasPrefix(l, "PRODUCT  ") },
			"ROLES", "CONDITIONS", "DOCUMENTS", "EDITIONS")
	}
}

func catalogNonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func catalogDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// --- show ---------------------------------------------------------------

const showExamples = `  # USM Appliance Sensor, release 5.4 (9391/tcp still in force)
  flowaudit catalog show usm@5.4 --role sensor

  # The same Sensor with the VPN: 33800/tcp replaces the Sensor-Server ports
  flowaudit catalog show usm@5.4 --role sensor --conditions vpn

  # Latest UTMStack, every role, multi-node and NetFlow on, as JSON
  flowaudit catalog show utmstack --conditions multi-node,netflow --json

  # VSOS scanning server with ICAP, with each rule's citation and reading
  flowaudit catalog show vsos@9.2 --role scanning-server --conditions icap --notes

  # The USM Sensor as the older, AlienVault edition of the document has it
  # (the default is the newest edition, LevelBlue)
  flowaudit catalog show usm@5.6.5#alienvault --role sensor

Conditions: NAME switches one on, !NAME or NAME=false off (the default).`

func setupCatalogShow(fs *pflag.FlagSet) runFunc {
	var (
		src    catalogSource
		role   string
		conds  []string
		asJSON bool
		notes  bool
	)
	src.register(fs)
	fs.StringVarP(&role, "role", "r", "", "show only this role (default: every role)")
	fs.StringSliceVarP(&conds, "conditions", "c", nil, "conditions switched on, e.g. vpn,ha (see the list printed without it)")
	fs.BoolVar(&asJSON, "json", false, "write the matrices as a JSON array")
	fs.BoolVar(&notes, "notes", false, "print every rule's citation, quote and reading, and the family's readings")
	var width int
	fs.IntVar(&width, "width", 0, widthUsage)
	return func(e *env, args []string) error {
		switch len(args) {
		case 0:
			return usageErrorf("catalog show: missing PRODUCT[@VERSION][#EDITION] (see flowaudit catalog list)")
		case 1:
		default:
			return usageErrorf("unexpected argument %q", args[1])
		}
		cat, err := src.load()
		if err != nil {
			return err
		}
		p, v, ed, err := cat.ResolveRef(args[0])
		if err != nil {
			return err
		}
		f, err := p.Family(v)
		if err != nil {
			return err
		}
		cm, err := catalog.ParseConditions(conds)
		if err != nil {
			return err
		}
		roles := f.RoleNames()
		if role != "" {
			roles = []string{role}
		}
		var ms []*catalog.Matrix
		for _, r := range roles {
			m, err := p.EffectiveEdition(v, ed, r, cm)
			if err != nil {
				return err
			}
			ms = append(ms, m)
		}
		if asJSON {
			return catalogWriteJSON(e.stdout, ms)
		}
		var w bytes.Buffer
		fmt.Fprintf(&w, "%s@%s — %s", p.ID, v, p.Name)
		if f.Title != "" {
			fmt.Fprintf(&w, " (%s)", f.Title)
		}
		fmt.Fprintln(&w)
		fmt.Fprintf(&w, "catalog: %s\n", f.Source)
		for _, d := range f.Documents {
			extra := ""
			if d.Source != catalog.SourceSeed {
				extra = " [" + d.Source + "]"
			}
			fmt.Fprintf(&w, "document: %s — %s%s\n", d.ID, d.Title, extra)
		}
		if e, ok := f.Edition(ed); ok {
			var names []string
			for _, x := range f.Editions {
				names = append(names, x.Name)
			}
			def := ""
			if ed == f.DefaultEdition() {
				def = "default; "
			}
			fmt.Fprintf(&w, "edition: %s — follows %s (%seditions: %s)\n", e.Name, e.Document, def, strings.Join(names, ", "))
		}
		if len(f.Conditions) > 0 {
			fmt.Fprintln(&w, "conditions:")
			for _, c := range f.Conditions {
				state := "off"
				if cm[c.Name] {
					state = "on"
				}
				fmt.Fprintf(&w, "  %-20s %-3s  %s\n", c.Name, state, c.Description)
			}
		}
		for _, m := range ms {
			fmt.Fprintln(&w)
			if err := m.WriteText(&w, notes); err != nil {
				return err
			}
		}
		if notes && len(f.Readings) > 0 {
			fmt.Fprintln(&w, "\nreadings of the documents:")
			for _, r := range f.Readings {
				fmt.Fprintf(&w, "\n%s  (%s)\n", r.ID, r.Source)
				fmt.Fprintf(&w, "  %s § %s\n", r.Citation.Doc, r.Citation.Section)
				if r.Citation.Quote != "" {
					fmt.Fprintf(&w, "    \"%s\"\n", r.Citation.Quote)
				}
				fmt.Fprintf(&w, "    reading: %s\n", r.Citation.Note)
			}
		}
		fmt.Fprintln(&w, "\nFLAGS: supplementary = cited from a public source outside the vendor's seed documents; deprecated = port the vendor retired for this release.")
		return writeFitted(e, width, w.String(), func(l string) bool { return strings.HasPrefix(l, "DIR  PROTO  ") },
			"PEER", "ID", "PURPOSE", "CITED")
	}
}

func catalogWriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// --- validate -------------------------------------------------------------

const validateExamples = `  # A catalog for another appliance (same format as catalog/data/*.yaml)
  flowaudit catalog validate my-appliance.yaml

  # A product spread over two files, plus a site file (detected by its keys)
  flowaudit catalog validate appliance-v1.yaml appliance-v2.yaml site.yaml

  # A site file checked against the zones and roles of a product release
  flowaudit catalog validate --site --product utmstack@11 site.yaml

Exit codes: 0 all files valid, 1 a file has problems (printed as FILE:LINE: message).`

func setupCatalogValidate(fs *pflag.FlagSet) runFunc {
	var (
		src      catalogSource
		forceSit bool
		product  string
	)
	fs.StringSliceVar(&src.files, "catalog", nil, "catalog file(s) that site files may refer to (besides the built-in ones)")
	fs.BoolVar(&forceSit, "site", false, "treat every FILE as a site file (default: detect by content)")
	fs.StringVar(&product, "product", "", "check site files against this product's zones and roles (default: the site's own product key)")
	return func(e *env, args []string) error {
		if len(args) == 0 {
			return usageErrorf("catalog validate: no FILE given")
		}
		var cats, sites []string
		for _, f := range args {
			if forceSit || catalogLooksLikeSite(f) {
				sites = append(sites, f)
			} else {
				cats = append(cats, f)
			}
		}
		bad := 0
		report := func(err error) {
			var list catalog.ErrorList
			if errors.As(err, &list) {
				for _, x := range list {
					fmt.Fprintln(e.stderr, x.Error())
				}
				return
			}
			fmt.Fprintln(e.stderr, err.Error())
		}

		// Catalog files are loaded together: a product may span files.
		var user *catalog.Catalog
		if len(cats) > 0 {
			c, err := catalog.LoadFiles(cats...)
			if err != nil {
				report(err)
				bad += catalogFilesIn(err, cats)
			} else {
				user = c
				for _, p := range c.Products() {
					for _, f := range p.Families() {
						fmt.Fprintf(e.stdout, "%s: ok (catalog: product %s, family %s, versions %q, %d roles, %d rules)\n",
							f.Source, p.ID, f.ID, f.Versions.String(), len(f.Roles), len(f.Rules()))
					}
				}
				if b, err := catalog.Builtin(); err == nil {
					if _, err := catalog.Merge(b, c); err != nil {
						fmt.Fprintf(e.stderr, "note: cannot be combined with the built-in catalog (use --no-builtin with it): %v\n", err)
					}
				}
			}
		}

		// The catalog site files are checked against.
		var siteCat *catalog.Catalog
		if len(sites) > 0 {
			var err error
			extra := catalogSource{files: src.files}
			if siteCat, err = extra.load(); err != nil {
				return err
			}
			if user != nil {
				if m, err := catalog.Merge(siteCat, user); err == nil {
					siteCat = m
				}
			}
		}
		for _, path := range sites {
			s, err := catalog.LoadSite(path)
			if err != nil {
				report(err)
				bad++
				continue
			}
			ref := product
			if ref == "" {
				ref = s.Product
			}
			checked := ""
			if ref != "" {
				p, v, _, err := siteCat.ResolveRef(ref)
				if err != nil {
					fmt.Fprintf(e.stderr, "%s: %v\n", path, err)
					bad++
					continue
				}
				if err := s.Check(p, v); err != nil {
					report(err)
					bad++
					continue
				}
				checked = fmt.Sprintf(", checked against %s@%s", p.ID, v)
			}
			fmt.Fprintf(e.stdout, "%s: ok (site: %d zones, %d roles, %d hosts%s)\n", path, len(s.Zones), len(s.Roles), len(s.Hosts), checked)
		}
		if bad > 0 {
			return fmt.Errorf("%w: %d of %d file(s)", errInvalidFiles, bad, len(args))
		}
		return nil
	}
}

// catalogFilesIn counts the files named in an error list (at least 1).
func catalogFilesIn(err error, files []string) int {
	var list catalog.ErrorList
	if !errors.As(err, &list) {
		return len(files)
	}
	seen := map[string]bool{}
	for _, e := range list {
		seen[e.File] = true
	}
	return max(1, len(seen))
}

// catalogLooksLikeSite tells a site file from a catalog file by its top-level
// keys (catalog.LooksLikeSite); it does not decode the file.
func catalogLooksLikeSite(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return catalog.LooksLikeSite(data)
}
