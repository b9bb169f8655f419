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

	"fanoutfanin/internal/httpjson"
)

// Handler is the code behind one function; RouteParams are the parameters
// it reads, which its function.json route must declare.
type Handler struct {
	Name        string
	RouteParams []string
	Handler     http.Handler
}

// Options configure the router.
type Options struct {
	RoutePrefix string // "api" by default in host.json
	Log         zerolog.Logger
	// LogWriter is where Log writes. In payload mode each invocation's log
	// lines go there and, as text, into the reply's Logs.
	LogWriter io.Writer
	// MaxPayloadBytes bounds an invocation payload.
	MaxPayloadBytes int64
}

// NewRouter serves each function at its route under the prefix (forwarding
// mode) and at POST /{name} (payload mode), and answers GET / at once for the
// host's readiness and health probes. Every function.json must have a handler
// and every handler a function.json whose route has the parameters it reads.
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
		if opts.RoutePrefix == "" && fn.Route == fn.Name {
			problems = append(problems, fmt.Sprintf("%s: with an empty route prefix its route %q is also its payload-mode path; set extensions.http.routePrefix or another route", fn.Name, fn.Route))
		}
	}
	for name := range byName {
		problems = append(problems, fmt.Sprintf("no %s/function.json for the %s function", name, name))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("function definitions do not match the handler:\n%s", strings.Join(problems, "\n"))
	}

	r := mux.NewRouter()
	r.Methods(http.MethodGet, http.MethodHead).Path("/").HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	handlerFor := map[string]http.Handler{}
	for _, h := range handlers {
		handlerFor[h.Name] = h.Handler
	}
	for _, fn := range fns {
		h := allowMethods(fn, handlerFor[fn.Name])
		// Forwarding mode, and direct calls when running standalone.
		for _, t := range fn.Templates() {
			r.Path(joinPath(opts.RoutePrefix, t)).Handler(withLogger(opts.Log, fn.Name, h))
		}
		r.Methods(http.MethodPost).Path("/" + fn.Name).Handler(payload(fn, h, opts))
	}
	r.NotFoundHandler = withLogger(opts.Log, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpjson.RenderError(w, r, httpjson.Errorf(http.StatusNotFound, "no function serves %s %s", r.Method, r.URL.Path))
	}))
	r.MethodNotAllowedHandler = withLogger(opts.Log, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", http.MethodPost)
		httpjson.RenderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, "%s %s: invocation payloads are POSTed", r.Method, r.URL.Path))
	}))
	return r, nil
}

// allowMethods answers 405 for a method the function's function.json does not list.
func allowMethods(fn Function, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fn.Allows(r.Method) {
			w.Header().Set("Allow", strings.Join(fn.Methods, ", "))
			httpjson.RenderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, "%s does not accept %s: use %s", fn.Name, r.Method, strings.Join(fn.Methods, " or ")))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// withLogger puts a logger in the request's context naming the function and
// the host's invocation id, and logs each request at debug level.
func withLogger(log zerolog.Logger, function string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		l := requestLogger(log, function, r)
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
