package customhandler

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"fanoutfanin/internal/httpjson"
)

// The Functions host refuses HTTP requests longer than 100 MiB (Azure
// Functions' documented HTTP trigger limit, also its default locally), so
// an invocation carries no larger body. As a JSON string, escaping can grow
// a body sixfold: \u0001 stands for one byte.
const (
	hostMaxRequestBytes = 100 << 20
	maxEscapeGrowth     = 6
)

// payloadLimits bound what reading an invocation payload reads and keeps.
type payloadLimits struct {
	// held bounds the bytes of the payload kept in memory; with keep set,
	// but for the body's text, which keep bounds.
	held int64
	// keep is how many characters of the request body's JSON text are
	// kept, an escape counting as one; 0 keeps it all. Past it, the text
	// is read, checked to be a JSON string, and dropped, up to dropped
	// bytes.
	keep    int64
	dropped int64
}

// limitsFor returns the bounds opts set on an invocation payload.
func limitsFor(opts Options) payloadLimits {
	lim := payloadLimits{held: opts.MaxPayloadBytes}
	if opts.MaxBodyBytes > 0 {
		// Each character or escape of a JSON string is a byte of the body
		// at least (but \r and \n, which are not counted: base64 skips
		// them), and base64 decodes to three quarters of its characters.
		// Past this many, the body is longer than MaxBodyBytes either way,
		// and so is what is kept of it.
		n := opts.MaxBodyBytes + 1
		lim.keep = (4*n+2)/3 + 4
		lim.dropped = maxEscapeGrowth * hostMaxRequestBytes
	}
	return lim
}

// readPayload reads an invocation payload from r. The payload it returns is
// the one read, but for the JSON text of the string Data.<trigger>.Body past
// lim.keep bytes, which is dropped (the string is closed where it was cut):
// cut reports whether that happened. Errors are *httpjson.Error: a payload
// over its bounds is a 413, one that cannot be read a 400. Whether what is
// kept is JSON is for the caller's decoder to say.
func readPayload(r io.Reader, trigger string, lim payloadLimits) (payload []byte, cut bool, err error) {
	s := &payloadScanner{in: bufio.NewReader(r), trigger: trigger, lim: lim}
	err = s.scan()
	if errors.Is(err, io.EOF) {
		err = nil // the decoder reports a payload that stops short
	}
	var readErr *readError
	switch {
	case errors.As(err, &readErr):
		return nil, false, httpjson.Errorf(http.StatusBadRequest, "reading the invocation payload: %v", readErr.err)
	case err != nil:
		return nil, false, err
	}
	return s.out.Bytes(), s.cut, nil
}

// payloadScanner follows the payload's JSON structure as far as it needs to
// find the request body: nesting, member names, and strings.
type payloadScanner struct {
	in      *bufio.Reader
	out     bytes.Buffer
	held    int64 // bytes of out that lim.held bounds
	trigger string
	lim     payloadLimits
	stack   []jsonFrame
	cut     bool
}

// jsonFrame is an object or array the scanner is in.
type jsonFrame struct {
	object  bool
	wantKey bool   // object: the next string is a member name
	key     string // object: the name of the member being read
}

// readError is a failure to read the payload, not a fault of its content.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }

func (s *payloadScanner) next() (byte, error) {
	c, err := s.in.ReadByte()
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, &readError{err}
	}
	return c, err
}

func (s *payloadScanner) emit(c byte) error {
	if s.held >= s.lim.held {
		return httpjson.Errorf(http.StatusRequestEntityTooLarge, "invocation payload is larger than %d bytes", s.lim.held)
	}
	s.held++
	s.out.WriteByte(c)
	return nil
}

// take reads the next byte and keeps it.
func (s *payloadScanner) take() (byte, error) {
	c, err := s.next()
	if err != nil {
		return 0, err
	}
	return c, s.emit(c)
}

func (s *payloadScanner) scan() error {
	for {
		c, err := s.take()
		if err != nil {
			return err
		}
		top := len(s.stack) - 1
		switch c {
		case '{':
			s.stack = append(s.stack, jsonFrame{object: true, wantKey: true})
		case '[':
			s.stack = append(s.stack, jsonFrame{})
		case '}', ']':
			if top >= 0 {
				s.stack = s.stack[:top]
			}
		case ':':
			if top >= 0 {
				s.stack[top].wantKey = false
			}
		case ',':
			if top >= 0 && s.stack[top].object {
				s.stack[top].wantKey = true
			}
		case '"':
			switch {
			case top >= 0 && s.stack[top].object && s.stack[top].wantKey:
				name, err := s.memberName()
				if err != nil {
					return err
				}
				s.stack[top].key = name
				// A later Data.<trigger>, or Body in it, replaces an
				// earlier one when decoded.
				if s.onBodyPath(top+1) && top >= 1 {
					s.cut = false
				}
			case s.onBodyPath(3) && !s.stack[top].wantKey:
				s.cut = false
				if err := s.body(); err != nil {
					return err
				}
			default:
				if err := s.str(); err != nil {
					return err
				}
			}
		}
	}
}

// onBodyPath reports whether the scanner is n objects deep (1 to 3) along
// Data.<trigger>.Body, with the innermost at the member of that name.
// Member names match as the decoder matches them: Data and Body in any
// case, the trigger exactly.
func (s *payloadScanner) onBodyPath(n int) bool {
	if len(s.stack) != n {
		return false
	}
	for i, f := range s.stack {
		if !f.object || (i < n-1 && f.wantKey) {
			return false
		}
		switch i {
		case 0:
			if !strings.EqualFold(f.key, "Data") {
				return false
			}
		case 1:
			if f.key != s.trigger {
				return false
			}
		case 2:
			if !strings.EqualFold(f.key, "Body") {
				return false
			}
		}
	}
	return true
}

// maxNameBytes is the longest member name the scanner decodes; the names
// it looks for are short.
const maxNameBytes = 1 << 10

// memberName reads the rest of a member name and returns it decoded, or ""
// if it is too long to be one the scanner looks for.
func (s *payloadScanner) memberName() (string, error) {
	start := s.out.Len() - 1 // the opening quote
	if err := s.str(); err != nil {
		return "", err
	}
	raw := s.out.Bytes()[start:]
	if len(raw) > maxNameBytes {
		return "", nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return "", nil // the decoder reports it
	}
	return name, nil
}

// str reads the rest of a string, through its closing quote.
func (s *payloadScanner) str() error {
	for {
		c, err := s.take()
		if err != nil {
			return err
		}
		switch c {
		case '"':
			return nil
		case '\\':
			if _, err := s.take(); err != nil {
				return err
			}
		}
	}
}

// body reads the rest of the request body's string, keeping lim.keep
// characters of its text and dropping the rest. It cuts between characters,
// never inside an escape or a UTF-8 sequence.
func (s *payloadScanner) body() error {
	var kept, dropped int64 // characters kept, bytes dropped
	var esc [6]byte
	for {
		c, err := s.next()
		if err != nil {
			return err
		}
		if c == '"' {
			return s.emit(c)
		}
		// The rest of a UTF-8 sequence is up to 3 bytes.
		inSequence := c&0xc0 == 0x80 && kept < s.lim.keep+3
		keep := dropped == 0 && (s.lim.keep == 0 || kept < s.lim.keep || inSequence)
		text := append(esc[:0], c)
		if c == '\\' {
			// What is kept, the decoder checks.
			if text, err = s.escape(text, !keep); err != nil {
				return err
			}
		}
		switch {
		case keep && s.lim.keep == 0:
			for _, b := range text {
				if err := s.emit(b); err != nil {
					return err
				}
			}
		case keep:
			s.out.Write(text) // bounded by lim.keep, not lim.held
			if !lineBreak(text) {
				kept++
			}
		case c < 0x20:
			// Dropped text is checked as the decoder would check it.
			return httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s.Body is not a valid JSON string: control character %#02x", s.trigger, c)
		default:
			s.cut = true
			if dropped += int64(len(text)); dropped > s.lim.dropped {
				return httpjson.Errorf(http.StatusRequestEntityTooLarge, "invocation payload's Data.%s.Body is longer than any the Functions host forwards: its JSON text runs on over %d bytes past %d characters", s.trigger, s.lim.dropped, s.lim.keep)
			}
		}
	}
}

// lineBreak reports whether an escape stands for \r or \n.
func lineBreak(text []byte) bool {
	switch strings.ToLower(string(text)) {
	case `\n`, `\r`, `\u000a`, `\u000d`:
		return true
	}
	return false
}

// escape reads the rest of an escape sequence begun in text, checking it if
// check is set.
func (s *payloadScanner) escape(text []byte, check bool) ([]byte, error) {
	bad := func(seq []byte) error {
		return httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s.Body is not a valid JSON string: invalid escape %q", s.trigger, seq)
	}
	c, err := s.next()
	if err != nil {
		return nil, err
	}
	text = append(text, c)
	switch c {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return text, nil
	case 'u':
		for range 4 {
			c, err := s.next()
			if err != nil {
				return nil, err
			}
			text = append(text, c)
			if check && !strings.ContainsRune("0123456789abcdefABCDEF", rune(c)) {
				return nil, bad(text)
			}
		}
		return text, nil
	}
	if check {
		return nil, bad(text)
	}
	return text, nil
}

// tooLargeBody is what a cut body's reader ends with: the error a
// MaxBytesReader gives, so the function refuses the body as too large.
type tooLargeBody struct{ limit int64 }

func (b tooLargeBody) Read([]byte) (int, error) {
	return 0, &http.MaxBytesError{Limit: b.limit}
}
