package functions

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"fmt"
	"html/template"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"fanoutfanin/internal/httpjson"
)

// The status page is one HTML document with its style and script inline,
// drawing the status function's JSON in a browser and refreshing it: it
// needs nothing but this handler, no CDN and no build step.
var (
	//go:embed page/status.html
	pageHTML string
	//go:embed page/status.css
	pageCSS string
	//go:embed page/status.js
	pageJS string

	pageTemplate = template.Must(template.New("status.html").Parse(pageHTML))
)

// pageData is what the page template is filled with. Style and Script are
// ours and go in as they are; the nonce and the instance id are escaped.
type pageData struct {
	Nonce      string
	InstanceID string
	Style      template.CSS
	Script     template.JS
}

// servePage answers with the status page of instance id, or with the list
// of instances when id is "". It is 200 whatever the id: the page asks the
// JSON API for the instance and shows its answer, a 404 included.
func servePage(w http.ResponseWriter, r *http.Request, id string) {
	nonce := rand.Text() // 130 random bits, new for every answer
	var page bytes.Buffer
	if err := pageTemplate.Execute(&page, pageData{Nonce: nonce, InstanceID: id, Style: template.CSS(pageCSS), Script: template.JS(pageJS)}); err != nil {
		httpjson.RenderError(w, r, fmt.Errorf("rendering the status page: %w", err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Only our own inline style and script, carrying this response's nonce,
	// run; the page talks to this origin alone, cannot be framed, and
	// sends no Referer, which would carry the function key in the URL.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+nonce+"'; style-src 'nonce-"+nonce+"'; "+
		"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// Each answer has its own nonce, and the URL may hold a key.
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(page.Len()))
	w.WriteHeader(http.StatusOK)
	w.Write(page.Bytes())
}

// wantsHTML reports whether the client prefers text/html to
// application/json, by the q-values of its Accept header. Browsers ask for
// text/html first and */* at a lower q; curl sends */*, which likes both
// the same, and API clients send application/json or nothing: all those
// get JSON.
func wantsHTML(r *http.Request) bool {
	accept := strings.Join(r.Header.Values("Accept"), ",")
	return acceptQ(accept, "text", "html") > acceptQ(accept, "application", "json")
}

// acceptQ is the q-value an Accept header gives media type typ/sub: that of
// the most specific range matching it (typ/sub, then typ/*, then */*), 0
// when none does. Ranges that cannot be read are skipped.
func acceptQ(accept, typ, sub string) float64 {
	q, specificity := 0.0, 0
	for _, part := range strings.Split(accept, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		mediaType, params, err := mime.ParseMediaType(part)
		if err != nil {
			continue
		}
		t, s, ok := strings.Cut(mediaType, "/")
		if !ok {
			continue
		}
		var n int
		switch {
		case t == typ && s == sub:
			n = 3
		case t == typ && s == "*":
			n = 2
		case t == "*" && s == "*":
			n = 1
		default:
			continue
		}
		rangeQ := 1.0
		if v, ok := params["q"]; ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f >= 0 && f <= 1) { // NaN too
				continue
			}
			rangeQ = f
		}
		// The most specific range wins; among equals, the first.
		if n > specificity {
			q, specificity = rangeQ, n
		}
	}
	return q
}
