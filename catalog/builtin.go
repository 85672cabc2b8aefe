package catalog

import (
	"embed"
	"io/fs"
	"sync"
)

//go:embed data/*.yaml
var dataFS embed.FS

//go:embed schema/catalog.schema.json
var catalogSchema []byte

//go:embed schema/site.schema.json
var siteSchema []byte

// BuiltinPrefix is the path prefix of the embedded catalog files in rule
// sources and errors: the files' place in the repository, so SARIF
// locations point at them.
const BuiltinPrefix = "catalog/"

var builtin struct {
	once sync.Once
	c    *Catalog
	err  error
}

// Builtin returns the catalog of the vendor documents shipped with
// flowaudit (catalog/data/*.yaml), parsed once.
func Builtin() (*Catalog, error) {
	builtin.once.Do(func() {
		names, err := fs.Glob(dataFS, "data/*.yaml")
		if err != nil {
			builtin.err = err
			return
		}
		builtin.c, builtin.err = LoadFS(dataFS, BuiltinPrefix, names...)
	})
	return builtin.c, builtin.err
}

// BuiltinFiles returns the embedded catalog files by repository path
// ("catalog/data/usm-appliance.yaml").
func BuiltinFiles() map[string][]byte {
	out := map[string][]byte{}
	names, _ := fs.Glob(dataFS, "data/*.yaml")
	for _, n := range names {
		b, _ := dataFS.ReadFile(n)
		out[BuiltinPrefix+n] = b
	}
	return out
}

// CatalogSchema returns the JSON Schema of catalog files.
func CatalogSchema() []byte { return append([]byte(nil), catalogSchema...) }

// SiteSchema returns the JSON Schema of site files.
func SiteSchema() []byte { return append([]byte(nil), siteSchema...) }
