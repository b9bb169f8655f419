package config

import (
	"net/url"
	"strconv"
	"strings"
)

// The OpenTelemetry settings the handler reads, by their standard names.
// The SDK reads the rest of the standard ones itself (headers, timeouts,
// certificates, batching).
const (
	SettingOTelDisabled       = "OTEL_SDK_DISABLED"
	SettingOTelExporter       = "OTEL_TRACES_EXPORTER"
	SettingOTelEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	SettingOTelTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	SettingOTelProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	SettingOTelTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	SettingOTelServiceName    = "OTEL_SERVICE_NAME"
	SettingOTelSampler        = "OTEL_TRACES_SAMPLER"
	SettingOTelSamplerArg     = "OTEL_TRACES_SAMPLER_ARG"
	// SettingSiteName is the function app's name, which Azure sets: the
	// service name when OTEL_SERVICE_NAME is not set.
	SettingSiteName = "WEBSITE_SITE_NAME"
)

// DefaultServiceName names the service in traces when neither
// OTEL_SERVICE_NAME nor WEBSITE_SITE_NAME is set.
const DefaultServiceName = "fanoutfanin"

// Telemetry is where the handler's traces go.
type Telemetry struct {
	// Endpoint is the OTLP endpoint traces are exported to; "" means
	// tracing is off.
	Endpoint string
	// Protocol is "grpc" or "http/protobuf".
	Protocol    string
	ServiceName string
}

// Enabled says whether traces are recorded and exported.
func (t Telemetry) Enabled() bool { return t.Endpoint != "" }

// telemetry reads the standard OpenTelemetry settings. Tracing is on when
// an OTLP endpoint is set, unless the SDK is disabled or the traces
// exporter is "none". Values the SDK would silently replace by a default
// (a sampler name, a protocol) are refused here, with the rest.
func (p *Parser) telemetry() Telemetry {
	disabled := strings.TrimSpace(p.getenv(SettingOTelDisabled))
	exporter := p.oneOf(SettingOTelExporter, "otlp", "otlp", "none")
	endpoint := p.otlpEndpoint(SettingOTelTracesEndpoint)
	if endpoint == "" {
		endpoint = p.otlpEndpoint(SettingOTelEndpoint)
	} else {
		p.otlpEndpoint(SettingOTelEndpoint) // checked all the same
	}
	protocol := p.oneOf(SettingOTelTracesProtocol, "", "grpc", "http/protobuf")
	if general := p.oneOf(SettingOTelProtocol, "http/protobuf", "grpc", "http/protobuf"); protocol == "" {
		protocol = general
	}
	p.sampler()
	service := strings.TrimSpace(p.getenv(SettingOTelServiceName))
	if site := strings.TrimSpace(p.getenv(SettingSiteName)); service == "" {
		service = site
	}
	if service == "" {
		service = DefaultServiceName
	}
	switch strings.ToLower(disabled) {
	case "", "false":
	case "true":
		endpoint = ""
	default:
		p.Fail("%s is %q: it must be true or false", SettingOTelDisabled, disabled)
	}
	if exporter == "none" {
		endpoint = ""
	}
	return Telemetry{Endpoint: endpoint, Protocol: protocol, ServiceName: service}
}

// otlpEndpoint reads an http or https URL; "" if unset.
func (p *Parser) otlpEndpoint(name string) string {
	s := strings.TrimSpace(p.getenv(name))
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.Fail("%s is %q: it must be an http or https URL, such as http://localhost:4318", name, s)
		return ""
	}
	return s
}

// sampler checks OTEL_TRACES_SAMPLER and its argument, which the SDK
// reads: it would quietly sample everything instead of a name it does not
// know.
func (p *Parser) sampler() {
	name := p.oneOf(SettingOTelSampler, "parentbased_always_on",
		"always_on", "always_off", "traceidratio",
		"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio")
	arg := strings.TrimSpace(p.getenv(SettingOTelSamplerArg))
	if arg == "" || !strings.HasSuffix(name, "traceidratio") {
		return
	}
	if f, err := strconv.ParseFloat(arg, 64); err != nil || f < 0 || f > 1 {
		p.Fail("%s is %q: it must be a ratio from 0 to 1, such as 0.25", SettingOTelSamplerArg, arg)
	}
}
