// Package customhandler speaks the Azure Functions custom handler protocol:
// it reads each function's function.json, the single source of its methods
// and route, and serves every function in both of the host's request modes,
// forwarded HTTP and invocation payloads, plus the host's readiness probe.
package customhandler

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"fanoutfanin/internal/jsonfile"
)

// Function is one HTTP function as its function.json declares it.
type Function struct {
	Name    string   // the function's folder name
	Methods []string // upper case; empty allows every method
	Route   string   // route template without the prefix, e.g. "status/{instanceId}/{action?}"
	Params  []string // the route's {parameters}, in order, without "?"; optional {name?} ones can only end it
	Trigger string   // name of the httpTrigger binding: the key under Data in payload mode
	Output  string   // name of the http output binding: the key under Outputs
}

// Allows reports whether the function accepts method. Method names match in
// any case, as function.json writes them ("get") and as the host matches
// them.
func (f Function) Allows(method string) bool {
	return len(f.Methods) == 0 || slices.ContainsFunc(f.Methods, func(m string) bool { return strings.EqualFold(m, method) })
}

// Path returns the function's URL path under prefix, with each route
// parameter replaced by its value in vars; optional ones without a value
// are left out.
func (f Function) Path(prefix string, vars map[string]string) string {
	var segs []string
	for _, seg := range strings.Split(f.Route, "/") {
		if routeParam.MatchString(seg) {
			v := vars[strings.Trim(seg, "{?}")]
			if v == "" && strings.HasSuffix(seg, "?}") {
				break
			}
			seg = url.PathEscape(v)
		}
		segs = append(segs, seg)
	}
	return joinPath(prefix, strings.Join(segs, "/"))
}

// Templates returns the function's route as templates for the router,
// without the "?": the whole route, and without each optional parameter
// from the last.
func (f Function) Templates() []string {
	segs := strings.Split(f.Route, "/")
	required := len(segs)
	for required > 0 && strings.HasSuffix(segs[required-1], "?}") {
		required--
	}
	segs = strings.Split(strings.ReplaceAll(f.Route, "?}", "}"), "/")
	var ts []string
	for n := len(segs); n >= required; n-- {
		ts = append(ts, strings.Join(segs[:n], "/"))
	}
	return ts
}

// match reports whether path is the function's route under prefix, as the
// Functions host matches routes: literal segments, the prefix's included,
// in any case, and one trailing slash allowed. It returns the value of each
// route parameter, one whole segment, as sent: instance ids are
// case-sensitive.
func (f Function) match(prefix, path string) (map[string]string, bool) {
	path = strings.TrimSuffix(strings.TrimPrefix(path, "/"), "/")
	got := strings.Split(path, "/")
	for _, t := range f.Templates() {
		if vars, ok := matchTemplate(strings.Split(strings.TrimPrefix(joinPath(prefix, t), "/"), "/"), got); ok {
			return vars, true
		}
	}
	return nil, false
}

// matchTemplate matches a path's segments against a template's.
func matchTemplate(want, got []string) (map[string]string, bool) {
	if len(got) != len(want) {
		return nil, false
	}
	vars := map[string]string{}
	for i, seg := range want {
		if paramName.MatchString(seg) {
			if got[i] == "" {
				return nil, false
			}
			vars[strings.Trim(seg, "{}")] = got[i]
		} else if !strings.EqualFold(got[i], seg) {
			return nil, false
		}
	}
	return vars, true
}

func joinPath(prefix, route string) string {
	if prefix == "" {
		return "/" + route
	}
	return "/" + prefix + "/" + route
}

var (
	routeParam   = regexp.MustCompile(`\{[^}]*\}`)
	paramName    = regexp.MustCompile(`^\{[A-Za-z_][A-Za-z0-9_]*\??\}$`)
	routeLiteral = regexp.MustCompile(`^[A-Za-z0-9._~!$&'()*+,;=:@-]+$`)
	httpMethods  = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}
)

type functionJSON struct {
	Bindings []struct {
		Type      string   `json:"type"`
		Direction string   `json:"direction"`
		Name      string   `json:"name"`
		Methods   []string `json:"methods"`
		Route     *string  `json:"route"`
	} `json:"bindings"`
}

// LoadFunctions reads every <folder>/function.json under the app root, as the
// Functions host does, sorted by name.
func LoadFunctions(appRoot string) ([]Function, error) {
	paths, err := filepath.Glob(filepath.Join(appRoot, "*", "function.json"))
	if err != nil {
		return nil, err
	}
	var fns []Function
	var errs []error
	for _, path := range paths {
		fn, err := loadFunction(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fns = append(fns, fn)
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].Name < fns[j].Name })
	return fns, errors.Join(errs...)
}

func loadFunction(path string) (Function, error) {
	name := filepath.Base(filepath.Dir(path))
	where := filepath.Join(name, "function.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return Function{}, err
	}
	var fj functionJSON
	if err := jsonfile.Decode(where, data, &fj); err != nil {
		return Function{}, err
	}

	fn := Function{Name: name}
	for _, b := range fj.Bindings {
		switch {
		case strings.EqualFold(b.Type, "httpTrigger") && strings.EqualFold(b.Direction, "in"):
			if fn.Trigger != "" {
				return Function{}, fmt.Errorf("%s: more than one httpTrigger binding", where)
			}
			fn.Trigger = b.Name
			fn.Route = name
			if b.Route != nil {
				fn.Route = strings.Trim(*b.Route, "/")
			}
			for _, m := range b.Methods {
				m = strings.ToUpper(m)
				if !slices.Contains(httpMethods, m) {
					return Function{}, fmt.Errorf("%s: %q is not an HTTP method", where, m)
				}
				fn.Methods = append(fn.Methods, m)
			}
		case strings.EqualFold(b.Type, "http") && strings.EqualFold(b.Direction, "out"):
			if fn.Output != "" {
				return Function{}, fmt.Errorf("%s: more than one http output binding", where)
			}
			fn.Output = b.Name
		default:
			return Function{}, fmt.Errorf("%s: binding %q of type %q (%s): this handler serves HTTP functions only, with one httpTrigger and one http output", where, b.Name, b.Type, b.Direction)
		}
	}
	if fn.Trigger == "" || fn.Output == "" {
		return Function{}, fmt.Errorf("%s: an HTTP function needs one httpTrigger binding and one http output binding", where)
	}
	if fn.Route == "" {
		return Function{}, fmt.Errorf("%s: the route is empty", where)
	}
	optional := false
	for _, seg := range strings.Split(fn.Route, "/") {
		switch {
		case paramName.MatchString(seg):
			fn.Params = append(fn.Params, strings.Trim(seg, "{?}"))
		case routeLiteral.MatchString(seg):
		default:
			return Function{}, fmt.Errorf("%s: route %q: segment %q is not supported; use literal segments and whole-segment {name} or {name?} parameters", where, fn.Route, seg)
		}
		switch {
		case strings.HasSuffix(seg, "?}"):
			optional = true
		case optional:
			return Function{}, fmt.Errorf("%s: route %q: only the last segments can be optional {name?} parameters", where, fn.Route)
		}
	}
	return fn, nil
}
