package catalog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// aliasBomb returns a YAML value of levels nested anchors, each a list
// repeating the previous one width times ("billion laughs"): a few hundred
// bytes that expand to width^levels scalars. indent is the indentation of
// the lines after the first.
func aliasBomb(levels, width int, leaf, indent string) string {
	var b strings.Builder
	b.WriteString("&l0 [")
	for i := 0; i < width; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(leaf)
	}
	b.WriteString("]\n")
	for l := 1; l < levels; l++ {
		fmt.Fprintf(&b, "%s- &l%d [", indent, l)
		for i := 0; i < width; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*l%d", l-1)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// bombSite is a site file whose zone is the alias bomb of issue 12 item
// 17: nine nested anchors, each list repeating the previous one nine times.
func bombSite() string {
	return "zones:\n  ADMIN_IP:\n    - " + aliasBomb(9, 9, `"192.0.2.1"`, "    ")
}

// bombCatalog is baseCatalog with the bomb as the first rule's ports.
func bombCatalog() string {
	return strings.Replace(baseCatalog, `    ports: [443, "8000-8001"]`+"\n", "    ports:\n      - "+aliasBomb(9, 9, "443", "      "), 1)
}

// loadBounded runs load and fails the test when it allocates more than
// limit bytes or returns an error text longer than maxText.
func loadBounded(t *testing.T, limit uint64, maxText int, load func() error) error {
	t.Helper()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := load()
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
		t.Errorf("loading allocated %d MiB (limit %d MiB)", alloc>>20, limit>>20)
	}
	if err != nil && len(err.Error()) > maxText {
		t.Errorf("error text is %d bytes long (limit %d): %.300s…", len(err.Error()), maxText, err.Error())
	}
	return err
}

func TestSiteAliasBombRefused(t *testing.T) {
	src := bombSite()
	if len(src) > 600 {
		t.Fatalf("the bomb should be a few hundred bytes, is %d", len(src))
	}
	err := loadBounded(t, 32<<20, 2000, func() error {
		_, err := ParseSite("bomb.yaml", []byte(src))
		return err
	})
	if err == nil {
		t.Fatal("alias bomb accepted")
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error does not wrap ErrInvalid: %v", err)
	}
	if !strings.Contains(err.Error(), "bomb.yaml:") || !strings.Contains(err.Error(), "alias") {
		t.Errorf("error does not say which file and that aliases are the problem: %v", err)
	}
}

func TestCatalogAliasBombRefused(t *testing.T) {
	src := bombCatalog()
	if !strings.Contains(src, "&l8 [*l7") {
		t.Fatal("bomb not inserted into the catalog")
	}
	err := loadBounded(t, 32<<20, 2000, func() error {
		_, err := Parse("bomb.yaml", []byte(src))
		return err
	})
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "alias") {
		t.Fatalf("alias bomb in a catalog: %v", err)
	}
	// The same through LoadFiles (--catalog).
	p := filepath.Join(t.TempDir(), "bomb.yaml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	err = loadBounded(t, 32<<20, 2000, func() error {
		_, err := LoadFiles(p)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), p+":") {
		t.Fatalf("LoadFiles: %v", err)
	}
}

// Anchors and aliases within the bound still work: the built-in UTMStack
// v11 and USM catalogs share citations that way, and a site may bind two
// zones to the same networks.
func TestAliasesWithinBound(t *testing.T) {
	s, err := ParseSite("site.yaml", []byte("zones:\n  SOURCE_NETWORK: &lan [10.0.0.0/8, 192.0.2.0/24]\n  NETWORK_DEVICES: *lan\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Zones) != 2 || s.Zones["NETWORK_DEVICES"] == nil || len(s.Zones["NETWORK_DEVICES"].Prefixes()) != 2 {
		t.Errorf("zones: %v", s.Zones)
	}
	// Just above the bound: refused, naming the alias's line.
	big := "zones:\n  A: &a [" + strings.Repeat(`"10.0.0.1", `, maxAliasNodes) + "]\n  B: *a\n"
	_, err = ParseSite("big.yaml", []byte(big))
	if err == nil || !strings.Contains(err.Error(), "big.yaml:3: ") || !strings.Contains(err.Error(), "alias") {
		t.Errorf("expansion beyond the bound: %v", err)
	}
	// A wide but alias-free file is not limited by the alias bound.
	wide := "zones:\n  A: [" + strings.Repeat(`"10.0.0.1", `, 3*maxAliasNodes) + "]\n"
	if _, err := ParseSite("wide.yaml", []byte(wide)); err != nil {
		t.Errorf("alias-free file: %v", err)
	}
}

func TestErrorLinesCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("zones:\n  ADMIN_IP:\n")
	const bad = 500
	for i := 0; i < bad; i++ {
		fmt.Fprintf(&b, "    - 10.0.%d.1/8\n", i%256)
	}
	_, err := ParseSite("many.yaml", []byte(b.String()))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("want an ErrorList, got %v", err)
	}
	if len(list) != maxErrorsPerFile+1 {
		t.Fatalf("%d error lines, want %d plus one summary", len(list), maxErrorsPerFile)
	}
	last := list[len(list)-1]
	if last.File != "many.yaml" || !strings.Contains(last.Msg, fmt.Sprintf("%d more problems", bad-maxErrorsPerFile)) {
		t.Errorf("summary line: %v", last)
	}
	if list[0].Line != 3 || !strings.Contains(list[0].Msg, `"10.0.0.1/8" has host bits set`) {
		t.Errorf("first error: %v", list[0])
	}
	// Across several files, each file is capped on its own.
	var files []namedData
	for _, n := range []string{"a.yaml", "b.yaml"} {
		head, _, _ := strings.Cut(baseCatalog, "rules:\n")
		files = append(files, namedData{n, []byte(head + "rules: [" + strings.Repeat("{id: BAD}, ", 200) + "]\n")})
	}
	_, err = load(files)
	if !errors.As(err, &list) {
		t.Fatalf("want an ErrorList, got %v", err)
	}
	per := map[string]int{}
	for _, e := range list {
		per[e.File]++
	}
	for _, n := range []string{"a.yaml", "b.yaml"} {
		if per[n] == 0 || per[n] > maxErrorsPerFile+1 {
			t.Errorf("%s: %d error lines", n, per[n])
		}
	}
}

// A single huge value in an error message is clipped.
func TestErrorMessageClipped(t *testing.T) {
	long := strings.Repeat("9", 100000)
	_, err := ParseSite("long.yaml", []byte("zones:\n  ADMIN_IP: \"10.0.0.1/"+long+"\"\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	if n := len(err.Error()); n > 2*maxMessageLen {
		t.Errorf("error text %d bytes long", n)
	}
	if !strings.HasPrefix(err.Error(), `long.yaml:2: bad CIDR "10.0.0.1/999`) {
		t.Errorf("clipped message lost its start: %.200s", err.Error())
	}
}
