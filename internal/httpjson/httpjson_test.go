package httpjson

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestRenderError(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		status int
		body   string
	}{
		{"caller's error", Errorf(http.StatusBadRequest, "workItems[%d] is empty", 2), 400, `{"error":"workItems[2] is empty"}`},
		{"wrapped caller's error", fmt.Errorf("starting: %w", Errorf(http.StatusNotFound, "no such instance")), 404, `{"error":"no such instance"}`},
		{"internal error", errors.New("open /data/hub.sqlite: Endpoint=https://x;Authentication=ManagedIdentity"), 500, `{"error":"internal error"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			r := httptest.NewRequest("GET", "/api/status/x", nil)
			r = r.WithContext(zerolog.New(&logs).WithContext(r.Context()))
			w := httptest.NewRecorder()
			RenderError(w, r, tc.err)
			if w.Code != tc.status {
				t.Errorf("status: got %d, want %d", w.Code, tc.status)
			}
			if got := strings.TrimSpace(w.Body.String()); got != tc.body {
				t.Errorf("body: got %s, want %s", got, tc.body)
			}
			if got := w.Header().Get("Content-Type"); got != "application/json; charset=utf-8" {
				t.Errorf("Content-Type: got %q", got)
			}
			if tc.status == 500 && !strings.Contains(logs.String(), "hub.sqlite") {
				t.Errorf("the internal error's detail was not logged: %q", logs.String())
			}
		})
	}
}

func TestReadBody(t *testing.T) {
	w := httptest.NewRecorder()
	_, err := ReadBody(w, httptest.NewRequest("POST", "/", strings.NewReader(strings.Repeat("x", 11))), 10, "request body")
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusRequestEntityTooLarge || e.Message != "request body is larger than 10 bytes" {
		t.Errorf("over the limit: got %v", err)
	}
	body, err := ReadBody(w, httptest.NewRequest("POST", "/", strings.NewReader("0123456789")), 10, "request body")
	if err != nil || string(body) != "0123456789" {
		t.Errorf("at the limit: got %q, %v", body, err)
	}
}
