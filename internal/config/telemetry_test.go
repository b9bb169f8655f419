package config

import "testing"

func TestLoadTelemetry(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings map[string]string
		want     Telemetry
	}{
		{"off by default", nil, Telemetry{Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
		{"an endpoint turns it on", map[string]string{SettingOTelEndpoint: "http://localhost:4318"},
			Telemetry{Endpoint: "http://localhost:4318", Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
		{"the traces endpoint wins", map[string]string{SettingOTelEndpoint: "http://a:4318", SettingOTelTracesEndpoint: "https://b/v1/traces"},
			Telemetry{Endpoint: "https://b/v1/traces", Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
		{"grpc", map[string]string{SettingOTelEndpoint: "http://localhost:4317", SettingOTelProtocol: "grpc"},
			Telemetry{Endpoint: "http://localhost:4317", Protocol: "grpc", ServiceName: DefaultServiceName}},
		{"the traces protocol wins", map[string]string{SettingOTelEndpoint: "http://x", SettingOTelProtocol: "grpc", SettingOTelTracesProtocol: "http/protobuf"},
			Telemetry{Endpoint: "http://x", Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
		{"the site's name", map[string]string{SettingSiteName: "my-app"}, Telemetry{Protocol: "http/protobuf", ServiceName: "my-app"}},
		{"the service name wins", map[string]string{SettingSiteName: "my-app", SettingOTelServiceName: "fanouts"},
			Telemetry{Protocol: "http/protobuf", ServiceName: "fanouts"}},
		{"disabled", map[string]string{SettingOTelEndpoint: "http://x", SettingOTelDisabled: "true"},
			Telemetry{Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
		{"no exporter", map[string]string{SettingOTelEndpoint: "http://x", SettingOTelExporter: "none"},
			Telemetry{Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
		{"a ratio", map[string]string{SettingOTelSampler: "parentbased_traceidratio", SettingOTelSamplerArg: "0.25"},
			Telemetry{Protocol: "http/protobuf", ServiceName: DefaultServiceName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := mustLoad(t, minimalHostJSON, tc.settings)
			if cfg.Telemetry != tc.want {
				t.Errorf("got %+v, want %+v", cfg.Telemetry, tc.want)
			}
			if cfg.Telemetry.Enabled() != (tc.want.Endpoint != "") {
				t.Errorf("Enabled() = %v", cfg.Telemetry.Enabled())
			}
		})
	}
}

// What the SDK would quietly replace by a default stops the handler.
func TestLoadTelemetryErrors(t *testing.T) {
	for _, tc := range []struct {
		setting, value string
		want           string
	}{
		{SettingOTelEndpoint, "localhost:4318", "http or https URL"},
		{SettingOTelTracesEndpoint, "grpc://x:4317", "http or https URL"},
		{SettingOTelProtocol, "http/json", "grpc, http/protobuf"},
		{SettingOTelTracesProtocol, "udp", "grpc, http/protobuf"},
		{SettingOTelSampler, "sometimes", "parentbased_always_on"},
		{SettingOTelSamplerArg + "+sampler", "1.5", "ratio from 0 to 1"},
		{SettingOTelExporter, "jaeger", "otlp, none"},
		{SettingOTelDisabled, "yes", "true or false"},
	} {
		t.Run(tc.setting, func(t *testing.T) {
			settings := map[string]string{tc.setting: tc.value}
			if tc.setting == SettingOTelSamplerArg+"+sampler" {
				settings = map[string]string{SettingOTelSampler: "traceidratio", SettingOTelSamplerArg: tc.value}
			}
			_, _, err := load(t, minimalHostJSON, settings)
			wantErr(t, err, tc.value, tc.want)
		})
	}
}
