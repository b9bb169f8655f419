// Package httpjson writes JSON responses and renders errors the one way every
// endpoint of the app does: {"error": "..."} with a status code.
package httpjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/rs/zerolog"
)

// Error is an error the caller can act on: its message is shown to them as is.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given HTTP status.
func Errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// ReadBody reads r's body, at most limit bytes of it. what names the body in
// errors: a larger body is a 413, an unreadable one a 400.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64, what string) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, Errorf(http.StatusRequestEntityTooLarge, "%s is larger than %d bytes", what, limit)
	} else if err != nil {
		return nil, Errorf(http.StatusBadRequest, "reading the %s: %v", what, err)
	}
	return body, nil
}

// Write encodes v as the JSON response body with the given status.
func Write(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own types reach here; failing to encode one is a bug.
		status = http.StatusInternalServerError
		body = []byte(`{"error":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// RenderError writes err as {"error": ...}. An *Error is shown as is; anything
// else is logged in full and shown as "internal error", so no internal detail
// (a path, a connection string) reaches the caller.
func RenderError(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		zerolog.Ctx(r.Context()).Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("internal error")
		e = &Error{Status: http.StatusInternalServerError, Message: "internal error"}
	}
	Write(w, e.Status, map[string]string{"error": e.Message})
}
