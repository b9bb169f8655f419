package main

import (
	"archive/zip"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The zip keeps the handler's executable bit and the app's layout, with
// forward slashes, which the Functions host on Linux needs.
func TestZipDirKeepsModesAndLayout(t *testing.T) {
	dir := t.TempDir()
	files := map[string]os.FileMode{"handler": 0o755, "host.json": 0o644, "status/function.json": 0o644}
	for name, mode := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte("contents of "+name), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, mode) // past the umask
	}
	out := filepath.Join(t.TempDir(), "app.zip")
	if err := zipDir(out, dir); err != nil {
		t.Fatal(err)
	}

	zr, err := zip.OpenReader(out)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	if got, want := len(zr.File), len(files); got != want {
		t.Errorf("entries: got %d, want %d", got, want)
	}
	for _, f := range zr.File {
		mode, ok := files[f.Name]
		if !ok {
			t.Errorf("unexpected entry %q", f.Name)
			continue
		}
		if got := f.Mode().Perm(); got != mode {
			t.Errorf("%s: mode %v, want %v", f.Name, got, mode)
		}
		rc, _ := f.Open()
		data, _ := io.ReadAll(rc)
		rc.Close()
		if string(data) != "contents of "+f.Name {
			t.Errorf("%s: contents %q", f.Name, data)
		}
	}
}
