package catalog

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The data flows packets → snapshot → audit, and the catalog is an input
// of the audit: catalog/ (and the vocabulary it shares with the snapshot,
// vocab/) imports no other package of this module — learning a catalog
// from snapshots lives in audit/ (audit.Learn).
func TestImportsOnlyTheVocabulary(t *testing.T) {
	const module = "github.com/flowaudit/flowaudit/"
	for dir, allowed := range map[string][]string{".": {module + "vocab"}, "../vocab": nil} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("%s: no Go files", dir)
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			src, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			f, err := parser.ParseFile(token.NewFileSet(), name, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if strings.HasPrefix(path, module) && !slices.Contains(allowed, path) {
					t.Errorf("%s imports %s (allowed from this module: %v)", name, path, allowed)
				}
			}
		}
	}
}
