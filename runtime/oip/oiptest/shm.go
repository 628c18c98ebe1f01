package oiptest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/esper/kasmina-host/runtime/shm"
)

// SharedRegion makes a zeroed shared memory object of size bytes in a
// fresh directory and a registry over that directory (closed when the
// test ends) with the whole object registered as region. It returns the
// registry and the object's path, through which the test reads and writes
// what the host sees.
func SharedRegion(t testing.TB, region string, size int) (*shm.Registry, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "obj")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := shm.New(shm.Options{Dir: dir})
	t.Cleanup(reg.Close)
	if err := reg.Register(region, "/obj", 0, uint64(size)); err != nil {
		t.Fatal(err)
	}
	return reg, path
}
