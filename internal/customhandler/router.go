package customhandler

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/internal/httpjson"
)

// Handler is the code behind one function; RouteParams are the parameters
// it reads, through RouteValues, which its function.json route must declare.
type Handler struct {
	Name        string
	RouteParams []string
	Handler     http.Handler
}

// RouteValues are the route parameters of the request a Handler serves
// (instanceId in status/{instanceId?}, say), in either host mode: the router
// matched them in forwarding mode; the host sent them as the invocation's
// Params in payload mode.
func RouteValues(r *http.Request) map[string]string { return mux.Vars(r) }

// Options configure the router.
type Options struct {
	RoutePrefix string // "api" by default in host.json
	Log         zerolog.Logger
	// LogWriter is where Log writes. In payload mode each invocation's log
	// lines go there and, as text, into the reply's Logs.
	LogWriter io.Writer
	// MaxPayloadBytes bounds an invocation payload as held in memory; with
	// MaxBodyBytes set, all of it but the request body, which the cut
	// bounds.
	MaxPayloadBytes int64
	// MaxBodyBytes is the largest request body any function accepts; 0 for
	// no cut. In payload mode, a body certainly longer than that (its JSON
	// text past a third more characters) reaches the function cut there,
	// then failing with *http.MaxBytesError: the function's own limit
	// refuses it, in the reply, as in forwarding mode. The rest of the
	// body is read and dropped, never held.
	MaxBodyBytes int64
}

// NewRouter serves each function at its route under the prefix (forwarding
// mode) and at POST /{name} (payload mode), and answers GET / at once for the
// host's readiness and health probes. Every function.json must have a handler
// and every handler a function.json whose route has the parameters it reads.
//
// Routes match as the Functions host matches them: in any case, with or
// without a trailing slash. A request whose path is a function's route but
// whose method no function there accepts gets a 405 naming the methods.
func NewRouter(fns []Function, handlers []Handler, opts Options) (http.Handler, error) {
	byName := map[string]Handler{}
	for _, h := range handlers {
		byName[h.Name] = h
	}
	var problems []string
	for _, fn := range fns {
		h, ok := byName[fn.Name]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s/function.json declares a function this handler does not implement", fn.Name))
			continue
		}
		delete(byName, fn.Name)
		for _, p := range h.RouteParams {
			if !slices.Contains(fn.Params, p) {
				problems = append(problems, fmt.Sprintf("%s/function.json: route %q lacks the {%s} parameter the function reads", fn.Name, fn.Route, p))
			}
		}
		if opts.RoutePrefix != "" {
			continue
		}
		for _, other := range fns {
			if _, ok := fn.match("", "/"+other.Name); !ok {
				continue
			}
			if other.Name == fn.Name {
				problems = append(problems, fmt.Sprintf("%s: with an empty route prefix its route %q is also its payload-mode path; set extensions.http.routePrefix or another route", fn.Name, fn.Route))
			} else {
				problems = append(problems, fmt.Sprintf("%s: with an empty route prefix its route %q also matches /%s, the payload-mode path of %s; set extensions.http.routePrefix or another route", fn.Name, fn.Route, other.Name, other.Name))
			}
		}
	}
	for name := range byName {
		problems = append(problems, fmt.Sprintf("no %s/function.json for the %s function", name, name))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("function definitions do not match the handler:\n%s", strings.Join(problems, "\n"))
	}

	// Every route matches any method and refuses the ones it does not take
	// itself, so that each 405 says what the path accepts.
	r := mux.NewRouter()
	r.Path("/").HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			refuseMethod(w, r, []string{http.MethodGet, http.MethodHead}, "%s /: the readiness probe is GET or HEAD", r.Method)
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	handlerFor := map[string]http.Handler{}
	for _, h := range handlers {
		handlerFor[h.Name] = h.Handler
	}
	// Payload mode: the host POSTs to the function's name, exactly.
	for _, fn := range fns {
		r.MatcherFunc(func(req *http.Request, _ *mux.RouteMatch) bool {
			return req.URL.Path == "/"+fn.Name
		}).Handler(payload(fn, allowMethods(fn, handlerFor[fn.Name]), opts))
	}
	// Forwarding mode, and direct calls when running standalone: the first
	// function whose route matches and that accepts the method.
	for _, fn := range fns {
		r.MatcherFunc(func(req *http.Request, m *mux.RouteMatch) bool {
			vars, ok := fn.match(opts.RoutePrefix, req.URL.Path)
			if !ok || !fn.Allows(req.Method) {
				return false
			}
			m.Vars = vars
			return true
		}).Handler(withLogger(opts.Log, fn.Name, handlerFor[fn.Name]))
	}
	r.MatcherFunc(func(req *http.Request, _ *mux.RouteMatch) bool {
		return slices.ContainsFunc(fns, func(fn Function) bool {
			_, ok := fn.match(opts.RoutePrefix, req.URL.Path)
			return ok
		})
	}).Handler(methodNotAllowed(fns, opts))
	r.NotFoundHandler = withLogger(opts.Log, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpjson.RenderError(w, r, httpjson.Errorf(http.StatusNotFound, "no function serves %s %s", r.Method, r.URL.Path))
	}))
	return r, nil
}

// methodNotAllowed answers a request to a function route that no function
// there accepts the method of, naming the methods they do accept.
func methodNotAllowed(fns []Function, opts Options) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var names, methods []string
		for _, fn := range fns {
			if _, ok := fn.match(opts.RoutePrefix, r.URL.Path); !ok {
				continue
			}
			names = append(names, fn.Name)
			for _, m := range fn.Methods {
				if !slices.Contains(methods, m) {
					methods = append(methods, m)
				}
			}
		}
		function, verb := names[0], "does"
		if len(names) > 1 {
			function, verb = "", "do"
		}
		withLogger(opts.Log, function, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			refuseMethod(w, r, methods, "%s %s not accept %s: use %s", strings.Join(names, " and "), verb, r.Method, strings.Join(methods, " or "))
		})).ServeHTTP(w, r)
	})
}

// allowMethods answers 405 for a method the function's function.json does
// not list. In payload mode the host has chosen the function already; this
// is its answer to a method it does not take.
func allowMethods(fn Function, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fn.Allows(r.Method) {
			refuseMethod(w, r, fn.Methods, "%s does not accept %s: use %s", fn.Name, r.Method, strings.Join(fn.Methods, " or "))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// refuseMethod answers 405 with the methods allowed.
func refuseMethod(w http.ResponseWriter, r *http.Request, allowed []string, format string, args ...any) {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	httpjson.RenderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, format, args...))
}

// withLogger puts a logger in the request's context naming the function and
// the host's invocation id, and logs each request at debug level.
func withLogger(log zerolog.Logger, function string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		r, l := traced(r, requestLogger(log, function, r))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r.WithContext(l.WithContext(r.Context())))
		l.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", sw.status).Dur("elapsed", time.Since(start)).Msg("request")
	})
}

func requestLogger(log zerolog.Logger, function string, r *http.Request) zerolog.Logger {
	c := log.With()
	if function != "" {
		c = c.Str("function", function)
	}
	if id := r.Header.Get("X-Azure-Functions-InvocationId"); id != "" {
		c = c.Str("invocationId", id)
	}
	return c.Logger()
}

// traced puts the caller's trace context, a W3C traceparent and tracestate
// among r's headers (in payload mode, the invocation's), into r's context,
// where the spans a function starts find their parent, and names its trace
// and span on log's lines.
func traced(r *http.Request, log zerolog.Logger) (*http.Request, zerolog.Logger) {
	ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return r, log
	}
	return r.WithContext(ctx), log.With().Str("traceId", sc.TraceID().String()).Str("spanId", sc.SpanID().String()).Logger()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// BaseURL is the scheme and host the caller used, which the host passes on:
// X-Forwarded-Proto from Azure's front end, else the scheme of the URL in an
// invocation payload, else that of this connection.
func BaseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if r.URL.Scheme != "" {
		scheme = r.URL.Scheme
	}
	proto, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Proto"), ",")
	if proto = strings.ToLower(strings.TrimSpace(proto)); proto == "http" || proto == "https" {
		scheme = proto
	}
	return scheme + "://" + r.Host
}
