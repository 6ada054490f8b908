package api

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// loadOpenAPI parses and validates the embedded document.
func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		t.Fatalf("openapi.json does not load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not valid: %v", err)
	}
	return doc
}

func TestOpenAPIValid(t *testing.T) {
	doc := loadOpenAPI(t)
	if !doc.IsOpenAPI31OrLater() {
		t.Errorf("openapi = %q, want 3.1", doc.OpenAPI)
	}
	var v any
	if err := json.Unmarshal(OpenAPI, &v); err != nil {
		t.Fatal(err)
	}
}

// TestOpenAPIRoutes: the document's /v1 operations are exactly Routes (and
// /v1/openapi.json), each takes the bearer token, and the public endpoints
// take none.
func TestOpenAPIRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	bearer := func(reqs *openapi3.SecurityRequirements) bool {
		if reqs == nil {
			return false
		}
		for _, r := range *reqs {
			if _, ok := r["bearer"]; ok && len(r) == 1 {
				return true
			}
		}
		return false
	}
	inRoutes := map[string]bool{}
	for _, rt := range Routes {
		key := rt.Method + " " + rt.Path
		inRoutes[key] = true
		item := doc.Paths.Find(rt.Path)
		if item == nil || doc.Paths.Value(rt.Path) == nil {
			t.Errorf("%s: path not in the document", key)
			continue
		}
		op := item.GetOperation(rt.Method)
		if op == nil {
			t.Errorf("%s: operation not in the document", key)
			continue
		}
		sec := op.Security
		if sec == nil {
			sec = &doc.Security
		}
		if !bearer(sec) {
			t.Errorf("%s: does not require the bearer token", key)
		}
		for _, code := range []string{"401", "429", "500", "503"} {
			if op.Responses.Value(code) == nil {
				t.Errorf("%s: no %s response (every /v1/jobs request can get one)", key, code)
			}
		}
	}
	public := map[string]bool{"GET /v1/openapi.json": true, "GET /healthz": true, "GET /metrics": true}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			key := method + " " + path
			switch {
			case public[key]:
				if op.Security == nil || len(*op.Security) != 0 {
					t.Errorf("%s: must be documented as unauthenticated (security: [])", key)
				}
				delete(public, key)
			case strings.HasPrefix(path, "/v1/"):
				if !inRoutes[key] {
					t.Errorf("%s: documented but not in Routes", key)
				}
			default:
				t.Errorf("%s: documented but not served", key)
			}
		}
	}
	for key := range public {
		t.Errorf("%s: served but not documented", key)
	}
}

// jsonFields returns the JSON names of a struct type's fields as
// encoding/json writes them (embedded structs flattened), and which are
// always written (neither omitempty nor omitzero).
func jsonFields(t reflect.Type) (all, always []string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			a, r := jsonFields(ft)
			all, always = append(all, a...), append(always, r...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		all = append(all, name)
		o := strings.Split(opts, ",")
		if !slices.Contains(o, "omitempty") && !slices.Contains(o, "omitzero") {
			always = append(always, name)
		}
	}
	sort.Strings(all)
	sort.Strings(always)
	return all, always
}

// schemaFields returns an object schema's properties and required names,
// through allOf.
func schemaFields(s *openapi3.Schema) (props, required []string) {
	for name := range s.Properties {
		props = append(props, name)
	}
	required = append(required, s.Required...)
	for _, sub := range s.AllOf {
		p, r := schemaFields(sub.Value)
		props, required = append(props, p...), append(required, r...)
	}
	sort.Strings(props)
	sort.Strings(required)
	return props, required
}

// documentedTypes maps each schema of the document to the Go type whose
// JSON it describes.
var documentedTypes = map[string]reflect.Type{
	"ErrorBody":      reflect.TypeFor[errorBody](),
	"Error":          reflect.TypeFor[Error](),
	"Spec":           reflect.TypeFor[Spec](),
	"LimitRequest":   reflect.TypeFor[jobs.LimitRequest](),
	"Job":            reflect.TypeFor[Job](),
	"JobStatus":      reflect.TypeFor[jobs.JobStatus](),
	"JobList":        reflect.TypeFor[JobList](),
	"CancelResponse": reflect.TypeFor[CancelResponse](),
	"LogEvent":       reflect.TypeFor[jobs.LogEvent](),
	"Result":         reflect.TypeFor[jobs.Result](),
	"LimitsDoc":      reflect.TypeFor[jobs.LimitsDoc](),
	"LogDoc":         reflect.TypeFor[jobs.LogDoc](),
	"OutputDoc":      reflect.TypeFor[jobs.OutputDoc](),
	"SkippedDoc":     reflect.TypeFor[jobs.SkippedDoc](),
	"TrimmedDoc":     reflect.TypeFor[jobs.TrimmedDoc](),
	"InputFrom":      reflect.TypeFor[jobs.InputFrom](),
	"InputOrigin":    reflect.TypeFor[jobs.InputOrigin](),
	"InputDoc":       reflect.TypeFor[jobs.InputDoc](),
	"ManifestRef":    reflect.TypeFor[jobs.ManifestRef](),
	"EgressDoc":      reflect.TypeFor[jobs.EgressDoc](),
	"EgressEvent":    reflect.TypeFor[jobs.EgressEvent](),
	"Timings":        reflect.TypeFor[jobs.Timings](),
	"WebhookRef":     reflect.TypeFor[jobs.WebhookRef](),
	"WebhookStatus":  reflect.TypeFor[webhook.Status](),
	"WebhookAttempt": reflect.TypeFor[webhook.Attempt](),
}

// TestOpenAPISchemasMatchGoTypes: each object schema lists exactly the JSON
// fields of its Go type, and requires exactly those always written.
func TestOpenAPISchemasMatchGoTypes(t *testing.T) {
	doc := loadOpenAPI(t)
	for name, typ := range documentedTypes {
		ref := doc.Components.Schemas[name]
		if ref == nil {
			t.Errorf("schema %s (%s) is not in the document", name, typ)
			continue
		}
		props, required := schemaFields(ref.Value)
		all, always := jsonFields(typ)
		if !slices.Equal(props, all) {
			t.Errorf("schema %s has properties %v; %s has JSON fields %v", name, props, typ, all)
		}
		if !slices.Equal(required, always) {
			t.Errorf("schema %s requires %v; %s always writes %v (omitempty/omitzero fields must not be required)", name, required, typ, always)
		}
	}
	// The spec is decoded with DisallowUnknownFields.
	for _, name := range []string{"Spec", "LimitRequest"} {
		s := doc.Components.Schemas[name].Value
		if ap := s.AdditionalProperties.Has; ap == nil || *ap {
			t.Errorf("schema %s: additionalProperties must be false (unknown fields are refused)", name)
		}
	}
}

// TestOpenAPIEnums: enumerations match the Go constants.
func TestOpenAPIEnums(t *testing.T) {
	doc := loadOpenAPI(t)
	prop := func(schema, field string) *openapi3.Schema {
		s := doc.Components.Schemas[schema].Value
		if field != "" {
			s = s.Properties[field].Value
		}
		return s
	}
	for _, c := range []struct {
		name   string
		schema *openapi3.Schema
		want   []string
	}{
		{"State", prop("State", ""), strs(jobs.StatePending, jobs.StateScheduled, jobs.StateActive, jobs.StateRetry, jobs.StateDone)},
		{"ResultStatus", prop("ResultStatus", ""), strs(jobs.StatusSucceeded, jobs.StatusFailed, jobs.StatusTimedOut, jobs.StatusOutOfMemory, jobs.StatusCanceled, jobs.StatusError)},
		{"CancelOutcome", prop("CancelOutcome", ""), strs(jobs.CancelRemoved, jobs.CancelSignalled, jobs.CancelQueued)},
		{"WebhookAttempt.outcome", prop("WebhookAttempt", "outcome"), []string{webhook.OutcomeDelivered, webhook.OutcomeRetry, webhook.OutcomeFailed, webhook.OutcomeGone}},
		{"EgressEvent.decision", prop("EgressEvent", "decision"), []string{jobs.EgressAllowed, jobs.EgressRefused, jobs.EgressFailed}},
	} {
		var got []string
		for _, v := range c.schema.Enum {
			got = append(got, fmt.Sprint(v))
		}
		sort.Strings(got)
		sort.Strings(c.want)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: enum %v, want %v", c.name, got, c.want)
		}
	}
	// The result's status and the job's state are these schemas.
	if r := doc.Components.Schemas["Result"].Value.Properties["status"]; r.Ref != "#/components/schemas/ResultStatus" {
		t.Errorf("Result.status is %q, want a $ref to ResultStatus", r.Ref)
	}
	if r := doc.Components.Schemas["JobStatus"].Value.Properties["state"]; r.Ref != "#/components/schemas/State" {
		t.Errorf("JobStatus.state is %q, want a $ref to State", r.Ref)
	}
}

func strs[S ~string](v ...S) []string {
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = string(s)
	}
	return out
}

// TestOpenAPIErrorCodes: the Error schema's codes are exactly those the
// package's code uses.
func TestOpenAPIErrorCodes(t *testing.T) {
	doc := loadOpenAPI(t)
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`apiError\(\s*http\.Status\w+,\s*"([a-z_]+)"`)
	used := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(b), -1) {
			used[m[1]] = true
		}
	}
	if len(used) == 0 {
		t.Fatal("found no apiError calls")
	}
	var got, want []string
	for _, v := range doc.Components.Schemas["Error"].Value.Properties["code"].Value.Enum {
		got = append(got, fmt.Sprint(v))
	}
	for c := range used {
		want = append(want, c)
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("Error.code enum %v; the code uses %v", got, want)
	}
}

// fill sets every field of v, recursively, to a value that s accepts:
// an enum's first value, a URI for format uri, one element per slice and
// map, non-nil pointers.
func fill(t *testing.T, v reflect.Value, s *openapi3.Schema, path string) {
	t.Helper()
	s = nonNull(s)
	if v.Type() == reflect.TypeFor[time.Time]() {
		v.Set(reflect.ValueOf(time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), s, path)
	case reflect.Struct:
		for f := range v.Type().Fields() {
			fv := v.FieldByIndex(f.Index)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Anonymous && name == "" {
				fill(t, fv, s, path)
				continue
			}
			if !f.IsExported() || name == "-" {
				continue
			}
			ps := property(s, name)
			if ps == nil {
				t.Errorf("%s.%s: no schema", path, name)
				continue
			}
			fill(t, fv, ps, path+"."+name)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(t, v.Index(0), s.Items.Value, path+"[0]")
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		e := reflect.New(v.Type().Elem()).Elem()
		fill(t, e, s.AdditionalProperties.Schema.Value, path+"[K]")
		v.SetMapIndex(reflect.ValueOf("K").Convert(v.Type().Key()), e)
	case reflect.String:
		switch {
		case len(s.Enum) > 0:
			v.SetString(fmt.Sprint(s.Enum[0]))
		case s.Format == "uri":
			v.SetString("https://example.com/x")
		default:
			v.SetString("a1")
		}
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(7)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1.5)
	default:
		t.Fatalf("%s: cannot fill a %s", path, v.Type())
	}
}

// nonNull is a nullable schema's non-null branch.
func nonNull(s *openapi3.Schema) *openapi3.Schema {
	for _, sub := range s.AnyOf {
		if !sub.Value.Type.Is("null") {
			return sub.Value
		}
	}
	return s
}

func property(s *openapi3.Schema, name string) *openapi3.Schema {
	if p := s.Properties[name]; p != nil {
		return p.Value
	}
	for _, sub := range s.AllOf {
		if p := property(sub.Value, name); p != nil {
			return p
		}
	}
	return nil
}

// TestOpenAPIValuesValidate: JSON the code writes validates against the
// schemas: every field set, and the sparse documents of real edge cases
// (a job that never ran, a job without network).
func TestOpenAPIValuesValidate(t *testing.T) {
	doc := loadOpenAPI(t)
	check := func(schema string, v any) {
		t.Helper()
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var x any
		if err := json.Unmarshal(b, &x); err != nil {
			t.Fatal(err)
		}
		if err := doc.Components.Schemas[schema].Value.VisitJSON(x, openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("%s does not validate %s: %v", schema, b, err)
		}
	}
	for name, typ := range documentedTypes {
		v := reflect.New(typ)
		fill(t, v.Elem(), doc.Components.Schemas[name].Value, name)
		check(name, v.Interface())
	}

	// A job archived without a result: statusOf's stand-in result.
	never := &jobs.JobStatus{ID: "j1", Queue: "default", Tenant: "acme", State: jobs.StateDone, MaxRetry: 3, LastError: "lease lost",
		Result: &jobs.Result{ID: "j1", Queue: "default", Status: jobs.StatusError, Reason: "lease lost", Outputs: []jobs.OutputDoc{}}}
	check("Job", Job{JobStatus: never})
	check("JobStatus", never)
	check("JobList", JobList{Jobs: []*jobs.JobStatus{}})
	check("JobList", JobList{Jobs: []*jobs.JobStatus{never}, NextCursor: "1700000000000"})
	check("Job", Job{JobStatus: &jobs.JobStatus{ID: "j2", Queue: "q", State: jobs.StatePending}, Existing: true})
	check("EgressDoc", &jobs.EgressDoc{Asked: []string{"default"}, Requests: []jobs.EgressEvent{}, Destinations: []jobs.EgressDestination{}, Refusals: []jobs.EgressRefusal{}})
	check("EgressDoc", &jobs.EgressDoc{Asked: []string{"default"}, Requests: []jobs.EgressEvent{{Decision: jobs.EgressAllowed}},
		Destinations: []jobs.EgressDestination{{Host: "a.example", Port: 443, Allowed: 1}}, OtherDestinations: &jobs.EgressOther{Destinations: 2, Count: 3, Allowed: 3},
		Refusals: []jobs.EgressRefusal{{Host: "b.example", Port: 443, Count: 1}}, OtherRefusals: &jobs.EgressOther{Destinations: 1, Count: 1},
		Bypass: &jobs.EgressBypass{Attempts: 1, Bytes: 60}})
	check("WebhookStatus", &webhook.Status{URL: "https://example.com/h", ID: "msg_j1", State: "unknown", Attempts: []webhook.Attempt{}})
	check("ErrorBody", errorBody{apiError(404, "not_found", "", "no such job")})
	check("Spec", Spec{})
	check("Spec", Spec{Runtime: "python", Limits: jobs.LimitRequest{TimeoutSeconds: 10}})
}
