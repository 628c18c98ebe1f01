// Command modelgen writes package contracts' generated models file from
// the spec in contracts/internal/modelgen; go generate runs it in the
// contracts directory.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/esper/kasmina-host/contracts/internal/modelgen"
)

func main() {
	out := flag.String("o", modelgen.File, "file to write")
	flag.Parse()
	src, err := modelgen.Source(modelgen.Models)
	if err == nil {
		err = os.WriteFile(*out, src, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "modelgen:", err)
		os.Exit(1)
	}
}
