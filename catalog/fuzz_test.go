package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// checkLoadError checks what the loaders promise for any input: an error
// is an ErrorList wrapping ErrInvalid, with at most maxErrorsPerFile lines
// per file plus a summary, each of bounded length.
func checkLoadError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error does not wrap ErrInvalid: %v", err)
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("not an ErrorList: %T %v", err, err)
	}
	per := map[string]int{}
	for _, e := range list {
		per[e.File]++
		if len(e.Msg) > maxMessageLen+64 {
			t.Fatalf("message of %d bytes: %.200s…", len(e.Msg), e.Msg)
		}
	}
	for f, n := range per {
		if n > maxErrorsPerFile+1 {
			t.Fatalf("%s: %d error lines", f, n)
		}
	}
}

func fuzzSeeds(f *testing.F, site bool) {
	if site {
		f.Add([]byte(bombSite()))
		b, err := os.ReadFile(filepath.Join("..", "testdata", "sites", "utmstack11.yaml"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add([]byte("zones:\n  A: &a [10.0.0.0/8]\n  B: *a\nports:\n  usm.server.vpn: 33900\n"))
		return
	}
	f.Add([]byte(bombCatalog()))
	f.Add([]byte(baseCatalog))
	for _, b := range BuiltinFiles() {
		f.Add(b)
	}
}

// FuzzParse feeds arbitrary bytes to the catalog loader (what --catalog
// reads): it must not panic, hang or blow up, and its errors keep their
// shape and bounds.
func FuzzParse(f *testing.F) {
	fuzzSeeds(f, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		checkLoadError(t, err)
		if err == nil {
			for _, p := range c.Products() {
				for _, fam := range p.Families() {
					for _, r := range fam.RoleNames() {
						if _, err := p.Effective(fam.Latest, r, nil); err != nil {
							t.Fatalf("Effective(%s, %s): %v", fam.Latest, r, err)
						}
					}
				}
			}
		}
		LooksLikeSite(data)
	})
}

// FuzzParseSite is FuzzParse for site files (--site).
func FuzzParseSite(f *testing.F) {
	fuzzSeeds(f, true)
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := ParseSite("fuzz.yaml", data)
		checkLoadError(t, err)
		LooksLikeSite(data)
	})
}
