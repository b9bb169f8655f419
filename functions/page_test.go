package functions_test

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"fanoutfanin/functions"
)

// What browsers, curl and API clients send.
const (
	acceptChrome  = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
	acceptFirefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	acceptSafari  = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
)

func TestWantsHTML(t *testing.T) {
	for _, tc := range []struct {
		accept string
		want   bool
	}{
		{"", false},
		{"*/*", false}, // curl: both alike, so JSON
		{"application/json", false},
		{"application/json, text/plain, */*", false}, // axios
		{acceptChrome, true},
		{acceptFirefox, true},
		{acceptSafari, true},
		{"text/html", true},
		{"TEXT/HTML", true},
		{"text/html;level=1", true},
		{"text/*", true},
		{"text/*;q=0.9, */*;q=0.8", true},
		{"text/html, application/json", false}, // alike: JSON
		{"application/json;q=0.5, text/html", true},
		{"text/html;q=0.5, application/json", false},
		{"application/*;q=0.2, text/html;q=0.3", true},
		{"text/html;q=0, */*", false},         // HTML refused
		{"*/*;q=0.1, text/html;q=0", false},   // the more specific range wins, whatever the order
		{"text/html;q=0.5, text/*;q=1", true}, // text/html's own q, 0.5; nothing matches JSON
		{"text/html;q=0.5, */*;q=0.9", false},
		{"text/html;q=abc, */*;q=0.5", false}, // an unreadable range is skipped
		{"text/html;q=NaN", false},
		{"text/html;q=2", false},
		{"text/plain", false},
		{",,", false},
		{"garbage", false},
	} {
		r, _ := http.NewRequest("GET", "/api/status", nil)
		if tc.accept != "" {
			r.Header.Set("Accept", tc.accept)
		}
		if got := functions.WantsHTML(r); got != tc.want {
			t.Errorf("Accept %q: wantsHTML %v, want %v", tc.accept, got, tc.want)
		}
	}

	// Several Accept headers count as one list.
	r, _ := http.NewRequest("GET", "/api/status", nil)
	r.Header.Add("Accept", "application/json;q=0.1")
	r.Header.Add("Accept", "text/html")
	if !functions.WantsHTML(r) {
		t.Errorf("Accept %q: want HTML", r.Header.Values("Accept"))
	}
}

// getPage asks for url as a browser does.
func getPage(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", acceptChrome)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, string(body)
}

var nonceAttr = regexp.MustCompile(`<(script|style) nonce="([^"]+)">`)

// A browser gets the page, with a policy that runs only the page's own
// style and script, by a nonce of its own each time; other clients get JSON.
func TestStatusPage(t *testing.T) {
	s := newServer(t, nil)
	started := do(t, "POST", s.URL+"/api/fan_out_fan_in", `{"workItems": ["a"]}`)
	id := started.body["id"].(string)

	seen := map[string]bool{}
	for _, path := range []string{"/api/status", "/api/status/", "/api/status/" + id, "/api/status/no-such-instance"} {
		res, body := getPage(t, s.URL+path)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s as a browser: %d, want 200", path, res.StatusCode)
		}
		for header, want := range map[string]string{
			"Content-Type":           "text/html; charset=utf-8",
			"X-Content-Type-Options": "nosniff",
			"Referrer-Policy":        "no-referrer",
			"Cache-Control":          "no-store",
			"Vary":                   "Accept",
		} {
			if got := res.Header.Get(header); got != want {
				t.Errorf("GET %s: %s %q, want %q", path, header, got, want)
			}
		}
		csp := res.Header.Get("Content-Security-Policy")
		m := regexp.MustCompile(`^default-src 'none'; script-src 'nonce-([A-Z2-7]{26})'; style-src 'nonce-([A-Z2-7]{26})'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'$`).FindStringSubmatch(csp)
		if m == nil || m[1] != m[2] {
			t.Fatalf("GET %s: Content-Security-Policy %q", path, csp)
		}
		nonce := m[1]
		if seen[nonce] {
			t.Errorf("GET %s: nonce %s given before", path, nonce)
		}
		seen[nonce] = true
		tags := nonceAttr.FindAllStringSubmatch(body, -1)
		if len(tags) != 2 {
			t.Fatalf("GET %s: %d <script>/<style> tags with a nonce, want 2", path, len(tags))
		}
		for _, tag := range tags {
			if tag[2] != nonce {
				t.Errorf("GET %s: <%s nonce=%q>, want the header's %q", path, tag[1], tag[2], nonce)
			}
		}
		if n := strings.Count(body, "<script"); n != 1 {
			t.Errorf("GET %s: %d <script> tags, want only the one with the nonce", path, n)
		}
	}

	// The instance id is data: escaped wherever the page puts it.
	_, body := getPage(t, s.URL+"/api/status/%3Cimg%20src=x%20onerror=alert(1)%3E")
	if strings.Contains(body, "<img") || !strings.Contains(body, `data-instance-id="&lt;img src=x onerror=alert(1)&gt;"`) {
		t.Errorf("the instance id is not escaped in the page: %s", body[:min(len(body), 2000)])
	}

	// curl, API clients and anything not preferring HTML get JSON, as before.
	for _, accept := range []string{"", "*/*", "application/json", "text/html, application/json", "text/html;q=0.5, application/json"} {
		r := do(t, "GET", s.URL+"/api/status/"+id, "", "Accept", accept)
		if r.body["instanceId"] != id {
			t.Errorf("GET status with Accept %q: %d %s, want the instance's JSON status", accept, r.status, r.raw)
		}
		if got := r.header.Get("Vary"); got != "Accept" {
			t.Errorf("GET status with Accept %q: Vary %q, want Accept", accept, got)
		}
	}
	// Only GET of an instance or the list is a page: actions stay JSON.
	if r := do(t, "POST", s.URL+"/api/status/no-such-instance/terminate", "", "Accept", acceptChrome); r.status != http.StatusNotFound {
		t.Errorf("POST terminate as a browser: %d %s, want a JSON 404", r.status, r.raw)
	}
	if r := do(t, "GET", s.URL+"/api/status/"+id+"/terminate", "", "Accept", acceptChrome); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET terminate as a browser: %d %s, want a JSON 405", r.status, r.raw)
	}
}
