// helmrender renders a Helm chart the way `helm template` does, for the template
// functions kvtier's chart uses: Go text/template, the sprig function library, and
// Helm's own include, tpl, required, toYaml, fromYaml, toJson, fromJson and lookup, with
// .Values, .Release, .Chart, .Capabilities and .Template. The helm binary cannot be
// installed on the CI machines, so tests/deploy/check_chart.py renders the chart with
// this program instead.
//
//	helmrender [--name kvtier] [--namespace default] [-f values.yaml]... \
//	           [--set a.b=1,c=x]... [--set-string a.b=1]... [--api-versions v]... \
//	           [--kube-version 1.29.0] [--strict] [--notes FILE] CHART_DIR
//
// Values follow Helm's rules: chart values.yaml, then each -f file, then each --set, merged
// deeply (a null removes a key). Numbers read from YAML files are float64, as in Helm
// (which converts YAML through JSON); --set integers are int64. --strict makes a missing
// map key an error (like `helm lint --strict`), which catches typos in value names.
// Output: one "---\n# Source: <chart>/templates/<file>" document per non-empty template,
// in file name order; with --notes FILE, the rendered NOTES.txt goes to FILE (helm
// prints it after install; `helm template` skips it).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"gopkg.in/yaml.v3"
)

// ChartMeta mirrors the fields of Helm's chart.Metadata that templates read as .Chart.
type ChartMeta struct {
	APIVersion  string            `yaml:"apiVersion"`
	Name        string            `yaml:"name"`
	Version     string            `yaml:"version"`
	KubeVersion string            `yaml:"kubeVersion"`
	Description string            `yaml:"description"`
	Type        string            `yaml:"type"`
	Keywords    []string          `yaml:"keywords"`
	Home        string            `yaml:"home"`
	Sources     []string          `yaml:"sources"`
	Icon        string            `yaml:"icon"`
	AppVersion  string            `yaml:"appVersion"`
	Deprecated  bool              `yaml:"deprecated"`
	Annotations map[string]string `yaml:"annotations"`
}

// Release mirrors Helm's .Release.
type Release struct {
	Name      string
	Namespace string
	Service   string
	IsUpgrade bool
	IsInstall bool
	Revision  int
}

// KubeVersion mirrors .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// VersionSet mirrors .Capabilities.APIVersions (with its Has method).
type VersionSet []string

// Has reports whether an API version ("monitoring.coreos.com/v1") or a version/kind
// ("monitoring.coreos.com/v1/ServiceMonitor") is available.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Capabilities mirrors .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// TemplateInfo mirrors .Template.
type TemplateInfo struct {
	Name     string
	BasePath string
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// defaultAPIVersions is what a plain cluster serves (as `helm template` assumes).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "batch/v1",
	"rbac.authorization.k8s.io/v1", "autoscaling/v2",
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "helmrender: error:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("helmrender", flag.ContinueOnError)
	name := fs.String("name", "kvtier", "release name")
	namespace := fs.String("namespace", "default", "release namespace")
	kubeVersion := fs.String("kube-version", "1.29.0", "Kubernetes version for .Capabilities")
	strict := fs.Bool("strict", false, "fail on a missing map key")
	notes := fs.String("notes", "", "also render templates/NOTES.txt into this file")
	var valueFiles, sets, setStrings, apiVersions multiFlag
	fs.Var(&valueFiles, "f", "values file (repeatable)")
	fs.Var(&valueFiles, "values", "values file (repeatable)")
	fs.Var(&sets, "set", "a.b=v[,c=w] (repeatable)")
	fs.Var(&setStrings, "set-string", "a.b=v[,c=w] as strings (repeatable)")
	fs.Var(&apiVersions, "api-versions", "extra API version for .Capabilities (repeatable)")
	// Accept flags after the chart argument, as helm does.
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	if len(positional) != 1 {
		return errors.New("usage: helmrender [flags] CHART_DIR")
	}
	chartDir := positional[0]

	meta, err := loadChart(chartDir)
	if err != nil {
		return err
	}
	values, err := readValuesFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		v, err := readValuesFile(f)
		if err != nil {
			return err
		}
		values = mergeValues(values, v)
	}
	for _, s := range sets {
		if err := applySet(values, s, false); err != nil {
			return err
		}
	}
	for _, s := range setStrings {
		if err := applySet(values, s, true); err != nil {
			return err
		}
	}

	kv, err := parseKubeVersion(*kubeVersion)
	if err != nil {
		return err
	}
	caps := Capabilities{KubeVersion: kv,
		APIVersions: append(VersionSet(append([]string{}, defaultAPIVersions...)), apiVersions...)}
	rel := Release{Name: *name, Namespace: *namespace, Service: "Helm", IsInstall: true, Revision: 1}

	out, notesText, err := render(chartDir, meta, values, rel, caps, *strict, *notes != "")
	if err != nil {
		return err
	}
	if *notes != "" {
		if err := os.WriteFile(*notes, []byte(notesText), 0o644); err != nil {
			return err
		}
	}
	_, err = os.Stdout.WriteString(out)
	return err
}

func loadChart(dir string) (*ChartMeta, error) {
	data, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	var m ChartMeta
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %w", err)
	}
	if m.APIVersion != "v2" || m.Name == "" || m.Version == "" {
		return nil, errors.New("Chart.yaml: apiVersion v2, name and version are required")
	}
	return &m, nil
}

func parseKubeVersion(v string) (KubeVersion, error) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return KubeVersion{}, fmt.Errorf("bad --kube-version %q", v)
	}
	return KubeVersion{Version: "v" + strings.TrimPrefix(v, "v"), Major: parts[0], Minor: parts[1],
		GitVersion: "v" + strings.TrimPrefix(v, "v")}, nil
}

// readValuesFile reads YAML values with Helm's number semantics (float64).
func readValuesFile(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var v map[string]interface{}
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if v == nil {
		v = map[string]interface{}{}
	}
	return jsonNumbers(v).(map[string]interface{}), nil
}

// jsonNumbers turns every integer into float64, as a YAML -> JSON -> Go round trip does.
func jsonNumbers(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		for k, e := range x {
			x[k] = jsonNumbers(e)
		}
		return x
	case []interface{}:
		for i, e := range x {
			x[i] = jsonNumbers(e)
		}
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	default:
		return v
	}
}

// mergeValues merges src into dst (src wins; maps merge deeply; null deletes).
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, sv := range src {
		if sv == nil {
			delete(dst, k)
			continue
		}
		sm, sIsMap := sv.(map[string]interface{})
		dm, dIsMap := dst[k].(map[string]interface{})
		if sIsMap && dIsMap {
			dst[k] = mergeValues(dm, sm)
		} else {
			dst[k] = sv
		}
	}
	return dst
}

// splitUnescaped splits s at sep characters not preceded by a backslash.
func splitUnescaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			cur.WriteByte(s[i+1])
			i++
			continue
		}
		if s[i] == sep {
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(parts, cur.String())
}

// applySet applies one --set argument: comma-separated a.b.c=value assignments.
func applySet(values map[string]interface{}, arg string, asString bool) error {
	for _, assign := range splitUnescaped(arg, ',') {
		eq := strings.IndexByte(assign, '=')
		if eq <= 0 {
			return fmt.Errorf("--set %q: want key=value", assign)
		}
		keys := strings.Split(assign[:eq], ".")
		raw := assign[eq+1:]
		var val interface{} = raw
		if !asString {
			val = typedSetValue(raw)
		}
		m := values
		for i, k := range keys {
			if k == "" {
				return fmt.Errorf("--set %q: empty key", assign)
			}
			if i == len(keys)-1 {
				if val == nil {
					delete(m, k)
				} else {
					m[k] = val
				}
				break
			}
			next, ok := m[k].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				m[k] = next
			}
			m = next
		}
	}
	return nil
}

// typedSetValue mirrors Helm's strvals typing: bools, null, int64, else string.
func typedSetValue(s string) interface{} {
	switch s {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if len(s) > 1 && s[0] == '0' {
		return s // Helm keeps leading-zero numbers as strings
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i
	}
	return s
}

// forYaml makes whole float64 values integers again, so toYaml prints 30, not 30.0 or 3e+01.
func forYaml(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		out := make(map[string]interface{}, len(x))
		for k, e := range x {
			out[k] = forYaml(e)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, e := range x {
			out[i] = forYaml(e)
		}
		return out
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return int64(x)
		}
		return x
	default:
		return v
	}
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(forYaml(v)); err != nil {
		return "" // Helm's toYaml also swallows errors
	}
	_ = enc.Close()
	return strings.TrimSuffix(buf.String(), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// fromJSONArray is Helm's fromJsonArray: a JSON array, or a one-element list holding the
// error message when the text is not one.
func fromJSONArray(s string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func render(chartDir string, meta *ChartMeta, values map[string]interface{}, rel Release,
	caps Capabilities, strict, notes bool) (string, string, error) {
	tdir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		return "", "", err
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)

	var root *template.Template
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // Helm removes these two for hermetic rendering
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["fromJsonArray"] = fromJSONArray
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil // like `helm template`: no cluster
	}

	root = template.New(meta.Name).Funcs(funcs)
	if strict {
		root.Option("missingkey=error")
	} else {
		root.Option("missingkey=zero")
	}
	prefix := meta.Name + "/templates/"
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(tdir, n))
		if err != nil {
			return "", "", err
		}
		if _, err := root.New(prefix + n).Parse(string(data)); err != nil {
			return "", "", err
		}
	}

	var out strings.Builder
	var notesText string
	for _, n := range names {
		if strings.HasPrefix(n, "_") || (n == "NOTES.txt" && !notes) {
			continue
		}
		ctx := map[string]interface{}{
			"Values":       values,
			"Release":      rel,
			"Chart":        meta,
			"Capabilities": caps,
			"Template":     TemplateInfo{Name: prefix + n, BasePath: meta.Name + "/templates"},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, prefix+n, ctx); err != nil {
			return "", "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		if n == "NOTES.txt" {
			notesText = text
			continue
		}
		out.WriteString("---\n# Source: " + prefix + n + "\n" + strings.TrimLeft(text, "\n") + "\n")
	}
	return out.String(), notesText, nil
}
