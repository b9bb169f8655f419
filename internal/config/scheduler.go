package config

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Scheduler is where and how to reach the Durable Task Scheduler (or any
// durabletask gRPC backend), parsed from the connection string.
type Scheduler struct {
	Endpoint string // normalised URL without credentials: "https://host[:port]" or "http://host[:port]"; safe to log
	Host     string // host name only; what error messages and logs may show
	Address  string // host:port to dial; port defaults to 443 (https) or 80 (http)
	TLS      bool   // false only for http:// endpoints
	Auth     Auth
	// The identity to take tokens as. Not secrets, but they come from the
	// connection string, which may: never log them.
	ClientID      string // ManagedIdentity (user-assigned) or WorkloadIdentity
	TenantID      string // WorkloadIdentity
	TokenFilePath string // WorkloadIdentity
}

// Auth is how the app gets its tokens for the scheduler: the connection
// string's Authentication, in the spelling of the constants below.
type Auth string

// The Authentication values the connection string may give (in any case).
// The .NET SDK knows a few more (AzurePowerShell, VisualStudio, ...) that ask
// for a developer's sign-in, which a function app does not have.
const (
	AuthNone             Auth = "None"
	AuthDefaultAzure     Auth = "DefaultAzure"
	AuthManagedIdentity  Auth = "ManagedIdentity"
	AuthWorkloadIdentity Auth = "WorkloadIdentity"
	AuthEnvironment      Auth = "Environment"
	AuthAzureCLI         Auth = "AzureCli"
)

var auths = []Auth{AuthNone, AuthDefaultAzure, AuthManagedIdentity, AuthWorkloadIdentity, AuthEnvironment, AuthAzureCLI}

// TokenScope is the OAuth scope of scheduler tokens.
const TokenScope = "https://durabletask.io/.default"

// The connection string's keys, in the spelling error messages use. Keys
// match case-insensitively, as in the .NET, JS and Go SDKs.
const (
	keyEndpoint       = "Endpoint"
	keyAuthentication = "Authentication"
	keyTaskHub        = "TaskHub"
	keyClientID       = "ClientID"
	keyTenantID       = "TenantId"
	keyTokenFilePath  = "TokenFilePath"
)

var connectionKeys = []string{keyEndpoint, keyAuthentication, keyTaskHub, keyClientID, keyTenantID, keyTokenFilePath}

// The identity keys, and the Authentication values that use each. Any other
// combination is refused rather than ignored: a ClientID that is silently
// dropped would have the app take tokens as an identity nobody meant.
var identityKeys = []struct {
	key   string
	auths []Auth
}{
	{keyClientID, []Auth{AuthManagedIdentity, AuthWorkloadIdentity}},
	{keyTenantID, []Auth{AuthWorkloadIdentity}},
	{keyTokenFilePath, []Auth{AuthWorkloadIdentity}},
}

// hostPattern is what an endpoint's host name may be made of: DNS names (and
// IPv4 addresses) only. IPv6 addresses come in brackets and are checked apart.
var hostPattern = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$`)

// parseScheduler parses value, the connection string held by app setting
// setting, as the Durable Task Scheduler SDKs do (see
// shared/reference/dts-worker-protocol.md §6.4), but stricter where the
// SDKs guess: unknown keys and keys that do not apply to the Authentication
// are errors, not ignored.
//
// It returns the scheduler, or nil with every problem found, and the
// connection string's TaskHub ("" if absent or invalid), which the caller
// reconciles with host.json's hubName.
//
// The string may hold secrets, or parts of one pasted in the wrong place, so
// no error shows any of it but key names, the endpoint's host and the TaskHub
// name; each error starts with setting, so the user knows where to look.
func parseScheduler(setting, value string) (s *Scheduler, taskHub string, errs []error) {
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", setting, fmt.Sprintf(format, args...)))
	}

	// Segments are counted from 1 including empty ones, so that "segment 3"
	// is found by counting semicolons.
	values := map[string]string{}
	for i, segment := range strings.Split(value, ";") {
		if strings.TrimSpace(segment) == "" {
			continue // "a=b;" and "a=b;;c=d" are common and harmless
		}
		k, v, ok := strings.Cut(segment, "=")
		if !ok {
			fail("segment %d has no '=': the connection string is key=value pairs separated by ';'", i+1)
			continue
		}
		k = strings.TrimSpace(k)
		if k == "" {
			fail("segment %d has no key before its '='", i+1)
			continue
		}
		key := canonicalKey(k)
		if key == "" && keyLike.MatchString(k) {
			fail("unknown key %q (the keys are %s)", k, strings.Join(connectionKeys, ", "))
			continue
		} else if key == "" {
			// Not shown: text that does not look like a key may be a
			// secret pasted in the wrong place.
			fail("segment %d has an unknown key (the keys are %s)", i+1, strings.Join(connectionKeys, ", "))
			continue
		}
		values[key] = strings.TrimSpace(v) // the last of a repeated key wins
	}

	s = &Scheduler{}
	s.parseEndpoint(values, fail)

	if auth, ok := values[keyAuthentication]; !ok {
		fail("no %s: add %s=<one of %s>", keyAuthentication, keyAuthentication, joinAuths(auths, ", "))
	} else if s.Auth = canonicalAuth(auth); s.Auth == "" {
		// Not the value: it may be a secret pasted in the wrong place.
		fail("%s must be one of %s", keyAuthentication, joinAuths(auths, ", "))
	}

	if s.Auth != "" {
		for _, ik := range identityKeys {
			if values[ik.key] != "" && !slices.Contains(ik.auths, s.Auth) {
				fail("%s does not apply to %s=%s: only %s use it; remove it", ik.key, keyAuthentication, s.Auth, joinAuths(ik.auths, " and "))
			}
		}
		// A token sent over plaintext can be read and reused by anyone on
		// the way; only the local emulator, which takes no token, speaks
		// plain http.
		if s.Endpoint != "" && !s.TLS && s.Auth != AuthNone {
			fail("%s is http://%s with %s=%s: the token would travel in clear; use https:// (plain http is only for %s=%s, as with the local emulator)",
				keyEndpoint, s.Host, keyAuthentication, s.Auth, keyAuthentication, AuthNone)
		}
	}
	// Empty values count as absent: "ClientID=" asks for no particular identity.
	s.ClientID = values[keyClientID]
	s.TenantID = values[keyTenantID]
	s.TokenFilePath = values[keyTokenFilePath]

	taskHub = values[keyTaskHub]
	if taskHub != "" && !hubNamePattern.MatchString(taskHub) {
		// Not the value: what fails the pattern may not be a name at all.
		fail("%s is not a valid task hub name: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit", keyTaskHub)
		taskHub = ""
	}

	if len(errs) > 0 {
		return nil, taskHub, errs
	}
	return s, taskHub, nil
}

// parseEndpoint sets s's Endpoint, Host, Address and TLS from the Endpoint
// value, or leaves them empty and reports through fail what is wrong with it.
func (s *Scheduler) parseEndpoint(values map[string]string, fail func(string, ...any)) {
	raw, ok := values[keyEndpoint]
	if !ok {
		fail("no %s: add %s=https://<scheduler>.<region>.durabletask.io (or http://localhost:8080 for the emulator)", keyEndpoint, keyEndpoint)
		return
	}
	if raw == "" {
		fail("%s is empty", keyEndpoint)
		return
	}

	// The SDKs assume https when there is no scheme; any scheme but http(s)
	// (grpc://, dns:///...) would be read differently by each SDK.
	scheme, rest, hasScheme := strings.Cut(raw, "://")
	if !hasScheme {
		scheme, rest = "https", raw
	}
	scheme = strings.ToLower(scheme)
	if scheme != "https" && scheme != "http" {
		fail("%s must start with https://, http:// or the host name", keyEndpoint)
		return
	}
	// url.Parse's errors quote the whole value: give our own, and say why
	// for the likeliest mistake, an IPv6 address without brackets.
	u, err := url.Parse(scheme + "://" + rest)
	if err != nil {
		authority, _, _ := strings.Cut(rest, "/")
		if !strings.Contains(authority, "[") && strings.Count(authority, ":") > 1 {
			fail("%s is not a valid URL: put an IPv6 address in brackets, as in %s://[::1]:8080", keyEndpoint, scheme)
		} else {
			fail("%s is not a valid URL: give %s://host[:port], with a port from 1 to 65535", keyEndpoint, scheme)
		}
		return
	}
	host := u.Hostname()
	if host == "" {
		fail("%s has no host: give %s://host[:port]", keyEndpoint, scheme)
		return
	}
	// The host may be shown once it is known to be a host name (not, say,
	// half a secret); user info, which may hold a password, never is.
	shown := ""
	if validHost(u) {
		shown = " (host " + strconv.Quote(host) + ")"
	}
	// url.Parse accepts all of these; the Go beta SDK refuses them and the
	// others drop them without a word, dialling somewhere the user did not
	// write. Refuse them.
	var extra string
	switch {
	case u.User != nil:
		extra = "user info ('...@')"
	case u.Path != "" && u.Path != "/":
		extra = "a path"
	case u.RawQuery != "" || u.ForceQuery:
		extra = "a query ('?')"
	case strings.Contains(rest, "#"):
		extra = "a fragment ('#')"
	}
	if extra != "" {
		fail("%s%s may not have %s: give only %s://host[:port]", keyEndpoint, shown, extra, scheme)
		return
	}
	if shown == "" {
		fail("%s does not have a valid host name: use letters, digits, '-', '_' and '.', or an IPv6 address in brackets", keyEndpoint)
		return
	}

	port := u.Port()
	if strings.HasSuffix(u.Host, ":") && port == "" {
		fail("%s%s has ':' but no port after it", keyEndpoint, shown)
		return
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			fail("%s%s has port %q: it must be from 1 to 65535", keyEndpoint, shown, port)
			return
		}
		port = strconv.Itoa(n) // "08080" → "8080"
	}

	s.TLS = scheme == "https"
	s.Host = strings.ToLower(host) // DNS and TLS names are case-insensitive
	authority := s.Host
	if strings.Contains(s.Host, ":") {
		authority = "[" + s.Host + "]" // IPv6
	}
	dialPort := port
	if port != "" {
		authority += ":" + port
	} else if s.TLS {
		dialPort = "443"
	} else {
		dialPort = "80"
	}
	s.Endpoint = scheme + "://" + authority
	s.Address = net.JoinHostPort(s.Host, dialPort)
}

// validHost reports whether u's host is a DNS name, an IPv4 address, or an
// IPv6 address in brackets (without a zone, which a remote scheduler never
// needs).
func validHost(u *url.URL) bool {
	host := u.Hostname()
	if strings.HasPrefix(u.Host, "[") {
		return net.ParseIP(host) != nil
	}
	return hostPattern.MatchString(host)
}

// canonicalKey returns the spelling of the known key k matches in any case,
// or "" if k is no known key.
func canonicalKey(k string) string {
	for _, known := range connectionKeys {
		if strings.EqualFold(k, known) {
			return known
		}
	}
	return ""
}

// canonicalAuth returns the Auth a matches in any case, or "" if none.
func canonicalAuth(a string) Auth {
	for _, known := range auths {
		if strings.EqualFold(a, string(known)) {
			return known
		}
	}
	return ""
}

// joinAuths lists Authentication values for a message.
func joinAuths(list []Auth, sep string) string {
	names := make([]string, len(list))
	for i, a := range list {
		names[i] = string(a)
	}
	return strings.Join(names, sep)
}

// keyLike matches what could be a key name (words, no digits); anything
// else, such as a base64 secret whose padding reads as '=', is not echoed.
var keyLike = regexp.MustCompile(`^[A-Za-z]{1,40}$`)
