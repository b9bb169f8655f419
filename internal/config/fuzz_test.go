package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// secretPlaces are where FuzzParseScheduler puts a secret in a connection
// string: anywhere but the endpoint's host and the TaskHub, the only values
// an error may show.
var secretPlaces = []string{
	"ClientSecret=%s", // a key the string does not have
	"Authentication=%s",
	"ClientID=%s",
	"TenantId=%s",
	"TokenFilePath=%s",
	"%s",   // a segment of its own
	"%s=x", // as a key
	"=%s",  // after an empty key
	"Endpoint=https://admin:%s@s.example",
	"Endpoint=https://s.example/%s",
	"Endpoint=https://s.example?code=%s",
	"Endpoint=https://s.example#%s",
	"Endpoint=https://s.example:%s",
	"Endpoint=%s://s.example",
}

// FuzzParseScheduler checks parseScheduler's promises for any string: a
// Scheduler whose every field is valid and that reads back the same from
// the connection string it describes, or errors that each start with the
// setting; and no error showing a secret-looking value put in the string
// where none belongs (secretPlaces, chosen by where).
func FuzzParseScheduler(f *testing.F) {
	f.Add("Endpoint=http://localhost:8080;TaskHub=default;Authentication=None", uint8(0), "Q8x~3f9a1c2b7e6d5f4a3b2c")
	f.Add("Endpoint=https://my.westus.durabletask.io;Authentication=ManagedIdentity;ClientID=6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b", uint8(1), "c2VjcmV0MTIzNDU2Nzg5MGFiY2Q=")
	f.Add("endpoint=HTTP://[::1]:08080/;AUTHENTICATION=none;;", uint8(5), "0123456789abcdefABCDEF")
	f.Add("Endpoint=https://s.example;Authentication=WorkloadIdentity;ClientID=c;TenantId=t;TokenFilePath=/var/run/token", uint8(8), "p4ssw0rd-0123456789")
	f.Add("Endpoint=https://s.example:99999;Authentication=AzureCli;Foo=bar;secret", uint8(12), "abc123/+=~._-XYZ")
	f.Add("Endpoint=s.example;Authentication=Environment;TaskHub=../x", uint8(19), "x1y2z3w4v5u6")
	f.Fuzz(func(t *testing.T, value string, where uint8, secret string) {
		checkParse(t, value)

		// The secret must look like one (a digit and a letter, no separator
		// or space) and be nowhere else in the string, where it could be the
		// host that errors rightly show.
		if !secretLike(secret) || strings.Contains(strings.ToLower(value), strings.ToLower(secret)) {
			return
		}
		segment := strings.Replace(secretPlaces[int(where)%len(secretPlaces)], "%s", secret, 1)
		withSecret := value + ";" + segment
		if int(where)/len(secretPlaces)%2 == 1 {
			withSecret = segment + ";" + value
		}
		for _, err := range checkParse(t, withSecret) {
			// Hosts are shown in lower case, so compare in lower case.
			if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(secret)) {
				t.Errorf("parseScheduler(%q): error shows the secret %q: %v", withSecret, secret, err)
			}
		}
	})
}

// secretLike reports whether s looks like a secret whose showing in an error
// would be a leak: 8 to 200 characters of base64, URL-safe base64 or an
// Entra client secret's alphabet, with a digit and a letter. Key names have
// no digits (scheduler.go shows those), and no word of the errors' own text
// looks like this.
func secretLike(s string) bool {
	if len(s) < 8 || len(s) > 200 {
		return false
	}
	var digit, letter bool
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digit = true
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
			letter = true
		case !strings.ContainsRune("+/=~._-", r):
			return false
		}
	}
	return digit && letter
}

// checkParse parses value and checks the result: errors that each start
// with the setting, or a valid Scheduler that the string it describes
// parses back into. It returns the errors.
func checkParse(t *testing.T, value string) []error {
	t.Helper()
	s, hub, errs := parseScheduler(testSetting, value)
	if hub != "" && !hubNamePattern.MatchString(hub) {
		t.Errorf("parseScheduler(%q): task hub %q is not a valid name", value, hub)
	}
	if (s == nil) == (len(errs) == 0) {
		t.Fatalf("parseScheduler(%q): Scheduler %v with %d errors: want one or the other", value, s, len(errs))
	}
	for _, err := range errs {
		if msg := err.Error(); !strings.HasPrefix(msg, testSetting+": ") || len(msg) == len(testSetting)+2 {
			t.Errorf("parseScheduler(%q): error does not start with the setting and say something: %q", value, msg)
		}
	}
	if s == nil {
		return errs
	}
	checkScheduler(t, value, s)

	// What the Scheduler says, written out, is read back the same.
	again := []string{"Endpoint=" + s.Endpoint, "Authentication=" + string(s.Auth)}
	for _, kv := range [][2]string{{"ClientID", s.ClientID}, {"TenantId", s.TenantID}, {"TokenFilePath", s.TokenFilePath}, {"TaskHub", hub}} {
		if kv[1] != "" {
			again = append(again, kv[0]+"="+kv[1])
		}
	}
	value2 := strings.Join(again, ";")
	s2, hub2, errs2 := parseScheduler(testSetting, value2)
	if err := errors.Join(errs2...); err != nil {
		t.Fatalf("parseScheduler(%q) gave %+v, but its own description %q is refused: %v", value, *s, value2, err)
	}
	if *s2 != *s || hub2 != hub {
		t.Errorf("parseScheduler(%q) gave %+v (hub %q), but %q reads back as %+v (hub %q)", value, *s, hub, value2, *s2, hub2)
	}
	return errs
}

// checkScheduler checks that every field of s, parsed from value, is valid.
func checkScheduler(t *testing.T, value string, s *Scheduler) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("parseScheduler(%q) = %+v: %s", value, *s, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(s.Endpoint)
	switch {
	case err != nil:
		fail("Endpoint is no URL: %v", err)
		return
	case s.TLS && u.Scheme != "https", !s.TLS && u.Scheme != "http":
		fail("Endpoint's scheme does not match TLS")
	case u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		fail("Endpoint has more than scheme://host[:port]")
	case u.Hostname() != s.Host || s.Host == "" || s.Host != strings.ToLower(s.Host):
		fail("Host is not the Endpoint's host in lower case")
	case strings.Contains(s.Host, ":") && net.ParseIP(s.Host) == nil:
		fail("Host is neither a host name nor an IP address")
	case !strings.Contains(s.Host, ":") && !hostPattern.MatchString(s.Host):
		fail("Host is not a valid host name")
	}
	port := u.Port()
	if port == "" {
		port = map[bool]string{true: "443", false: "80"}[s.TLS]
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		fail("Endpoint's port %q is not a number from 1 to 65535 as written by strconv", port)
	}
	if want := net.JoinHostPort(s.Host, port); s.Address != want {
		fail("Address is not %q", want)
	}

	if !slices.Contains(auths, s.Auth) {
		fail("Auth %q is not one of %v", s.Auth, auths)
	}
	if !s.TLS && s.Auth != AuthNone {
		fail("a token would travel over http")
	}
	for _, ik := range []struct {
		name, value string
		auths       []Auth
	}{
		{"ClientID", s.ClientID, []Auth{AuthManagedIdentity, AuthWorkloadIdentity}},
		{"TenantID", s.TenantID, []Auth{AuthWorkloadIdentity}},
		{"TokenFilePath", s.TokenFilePath, []Auth{AuthWorkloadIdentity}},
	} {
		if ik.value != "" && !slices.Contains(ik.auths, s.Auth) {
			fail("%s set with Authentication %s", ik.name, s.Auth)
		}
		if ik.value != strings.TrimSpace(ik.value) || strings.Contains(ik.value, ";") {
			fail("%s %q is not one trimmed value", ik.name, ik.value)
		}
	}
}
