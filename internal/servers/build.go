package servers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// build builds the main package pkg of the module in dir (relative to this
// module's root), or finds it built, and returns the binary's path. The
// binary is kept in a cache folder (os.UserCacheDir()/fanoutfanin-dtstest,
// else the temporary folder) under a name derived from the Go version and
// that module's go.mod and go.sum, so processes share it; `go build` itself
// is incremental.
func build(name, dir, pkg string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	root := filepath.Join(filepath.Dir(gomod), dir)
	h := sha256.New()
	gover, _ := exec.Command("go", "env", "GOVERSION", "GOOS", "GOARCH").Output()
	h.Write(gover)
	for _, f := range []string{"go.mod", "go.sum"} {
		b, _ := os.ReadFile(filepath.Join(root, f))
		h.Write(b)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cache = filepath.Join(cache, "fanoutfanin-dtstest")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	final := filepath.Join(cache, name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	if fi, err := os.Stat(final); err == nil && fi.Mode().IsRegular() {
		return final, nil
	}
	tmp, err := os.MkdirTemp(cache, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	// Atomic: concurrent processes may race here; the last rename wins, all copies are equal.
	if err := os.Rename(bin, final); err != nil {
		return "", err
	}
	// Best effort: remove binaries built for other go.mod/go.sum states, once they are an hour old.
	if old, _ := filepath.Glob(filepath.Join(cache, name+"-*")); len(old) > 0 {
		for _, p := range old {
			if fi, err := os.Stat(p); err == nil && p != final && time.Since(fi.ModTime()) > time.Hour {
				_ = os.Remove(p)
			}
		}
	}
	return final, nil
}
