package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/customhandler"
)

// docFiles are the README and every page under docs/.
func docFiles(t *testing.T) map[string]string {
	t.Helper()
	paths, _ := filepath.Glob("docs/*.md")
	files := map[string]string{}
	for _, p := range append(paths, "README.md", "BENCHMARKS.md") {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[p] = string(data)
	}
	return files
}

// anchors are the link targets a Markdown page's headings make, as GitHub
// makes them.
func anchors(page string) map[string]bool {
	out := map[string]bool{}
	inCode := false
	for line := range strings.SplitSeq(page, "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		h = regexp.MustCompile(`[^\p{L}\p{N}_\- ]`).ReplaceAllString(h, "")
		out[strings.ReplaceAll(h, " ", "-")] = true
	}
	return out
}

// Every link between the README and the docs leads to a file that exists
// and, if it names one, to a heading in it.
func TestDocLinksResolve(t *testing.T) {
	files := docFiles(t)
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for path, text := range files {
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			if file == "" {
				file = path
			} else {
				file = filepath.Join(filepath.Dir(path), file)
			}
			if _, err := os.Stat(file); err != nil {
				t.Errorf("%s links to %s, which does not exist", path, target)
				continue
			}
			if anchor == "" {
				continue
			}
			page, ok := files[file]
			if !ok {
				data, _ := os.ReadFile(file)
				page = string(data)
			}
			if !anchors(page)[anchor] {
				t.Errorf("%s links to %s: %s has no such heading", path, target, file)
			}
		}
	}
}

// Every setting the handler reads is in docs/configuration.md's tables,
// and every setting the tables name is one it reads.
func TestEverySettingIsDocumented(t *testing.T) {
	read := map[string]bool{}
	getenv := func(name string) string {
		read[name] = true
		if name == config.SettingAppRoot {
			return "."
		}
		return ""
	}
	if _, err := config.Load(nil, getenv, func(p *config.Parser) { functions.ReadFanouts(p) }); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for name := range read {
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("the handler reads %s, which docs/configuration.md does not describe", name)
		}
	}
	// The first cell of each table row names one or more settings.
	documented := regexp.MustCompile("(?m)^\\| ((?:`[A-Z][A-Z0-9_]+`(?:, )?)+) \\|")
	for _, m := range documented.FindAllStringSubmatch(doc, -1) {
		for _, name := range regexp.MustCompile("`([A-Z0-9_]+)`").FindAllStringSubmatch(m[1], -1) {
			if !read[name[1]] && name[1] != "GOGC" { // the Go runtime's own, read at start
				t.Errorf("docs/configuration.md describes %s, which the handler does not read", name[1])
			}
		}
	}
	if len(read) < 20 {
		t.Errorf("only %d settings read: %v", len(read), read)
	}
}

// Every route the function.json files and the status function's actions
// make is in docs/api.md, as "METHOD /api/path".
func TestEveryRouteIsDocumented(t *testing.T) {
	cfg, err := config.Load(nil, func(name string) string {
		if name == config.SettingAppRoot {
			return "."
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	fns, err := customhandler.LoadFunctions(".")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	var routes []string
	for _, fn := range fns {
		// The route's optional parameters make a route for each prefix;
		// {action} is each of the status function's actions.
		segments := strings.Split(fn.Route, "/")
		for n := len(segments); n > 0; n-- {
			if n < len(segments) && !strings.HasSuffix(segments[n], "?}") {
				break
			}
			path := "/" + cfg.RoutePrefix + "/" + strings.ReplaceAll(strings.Join(segments[:n], "/"), "?}", "}")
			switch {
			case fn.Name != "status":
				for _, m := range fn.Methods {
					routes = append(routes, m+" "+path)
				}
			case strings.HasSuffix(path, "{action}"):
				for action, methods := range functions.StatusActions() {
					if action != "" {
						for m := range strings.SplitSeq(methods, ", ") {
							routes = append(routes, m+" "+strings.TrimSuffix(path, "{action}")+action)
						}
					}
				}
			case strings.HasSuffix(path, "{instanceId}"):
				for m := range strings.SplitSeq(functions.StatusActions()[""], ", ") {
					routes = append(routes, m+" "+path)
				}
			default:
				routes = append(routes, "GET "+path) // the list
			}
		}
	}
	slices.Sort(routes)
	for _, r := range routes {
		if !strings.Contains(doc, "`"+r) {
			t.Errorf("docs/api.md does not describe %s", r)
		}
	}
	if len(routes) < 8 {
		t.Errorf("only %d routes found: %q", len(routes), routes)
	}
	t.Logf("routes: %q", routes)
}
