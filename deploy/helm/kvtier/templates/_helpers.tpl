{{/* Names, labels and the server flag file. */}}

{{- define "kvtier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, at most 52 characters so that "<fullname>-headless"
and the StatefulSet's pod names (with their controller-revision-hash label) fit 63. */}}
{{- define "kvtier.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kvtier.headlessName" -}}
{{- printf "%s-headless" (include "kvtier.fullname" .) }}
{{- end }}

{{- define "kvtier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvtier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvtier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvtier.labels" -}}
helm.sh/chart: {{ include "kvtier.chart" . }}
{{ include "kvtier.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: kvtier
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvtier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvtier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvtier.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret holding the token file (key "tokens"). */}}
{{- define "kvtier.authSecretName" -}}
{{- default (printf "%s-auth" (include "kvtier.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Secret holding tls.crt, tls.key and ca.crt. */}}
{{- define "kvtier.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "kvtier.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* Where the pod mounts things. */}}
{{- define "kvtier.dataMount" -}}/var/lib/kvtier/data{{- end }}
{{- define "kvtier.configMount" -}}/etc/kvtier/config{{- end }}
{{- define "kvtier.authMount" -}}/etc/kvtier/auth{{- end }}
{{- define "kvtier.tlsMount" -}}/etc/kvtier/tls{{- end }}

{{/* Checks values that would make a broken deployment; fails the render. */}}
{{- define "kvtier.validate" -}}
{{- $s := .Values.server }}
{{- range $name, $port := $s.ports }}
{{- if or (lt (int $port) 0) (gt (int $port) 65535) }}
{{- fail (printf "server.ports.%s: %v is not a port" $name $port) }}
{{- end }}
{{- end }}
{{- if or (eq (int $s.ports.grpc) 0) (eq (int $s.ports.http) 0) }}
{{- fail "server.ports.grpc and server.ports.http must be set (only ucx may be 0)" }}
{{- end }}
{{- $ports := list (int $s.ports.grpc) (int $s.ports.http) }}
{{- if ne (int $s.ports.ucx) 0 }}{{ $ports = append $ports (int $s.ports.ucx) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail "server.ports: grpc, ucx and http must differ" }}
{{- end }}
{{- $workers := int $s.ucxWorkers }}
{{- if or (lt $workers 1) (gt $workers 64) }}
{{- fail (printf "server.ucxWorkers: %v, want 1..64" $s.ucxWorkers) }}
{{- end }}
{{- if ne (int $s.ports.ucx) 0 }}
{{- $last := add (int $s.ports.ucx) (sub $workers 1) }}
{{- if gt (int $last) 65535 }}
{{- fail (printf "server.ports.ucx %d + server.ucxWorkers %d passes port 65535" (int $s.ports.ucx) $workers) }}
{{- end }}
{{- range $p := list (int $s.ports.grpc) (int $s.ports.http) }}
{{- if and (ge $p (int $s.ports.ucx)) (le $p (int $last)) }}
{{- fail (printf "server.ports: %d is one of the UCX workers' ports %d-%d" $p (int $s.ports.ucx) (int $last)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int $s.drainTimeoutSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.drainTimeoutSeconds (%d + %d), with time left to flush RocksDB" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) (int $s.drainTimeoutSeconds)) }}
{{- end }}
{{- if lt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount must be at least 1" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}
{{- fail "auth.enabled needs auth.tokens or auth.existingSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- $_ := required "tls.enabled without tls.existingSecret needs tls.cert" .Values.tls.cert }}
{{- $_ := required "tls.enabled without tls.existingSecret needs tls.key" .Values.tls.key }}
{{- if .Values.tls.clientAuth }}
{{- $_ := required "tls.clientAuth without tls.existingSecret needs tls.clientCA" .Values.tls.clientCA }}
{{- end }}
{{- end }}
{{- end }}

{{/* The token file built from auth.tokens (format: docs/service-contract.md). */}}
{{- define "kvtier.tokenFile" -}}
# kvtier token file: <token> <r|w|rw> <namespace-prefix>[,<namespace-prefix>...]
{{- range $i, $t := .Values.auth.tokens }}
{{- $token := required (printf "auth.tokens[%d].token is required" $i) $t.token }}
{{- if not (regexMatch "^[!-~]+$" $token) }}
{{- fail (printf "auth.tokens[%d].token must be printable ASCII without spaces" $i) }}
{{- end }}
{{- if not (has $t.access (list "r" "w" "rw")) }}
{{- fail (printf "auth.tokens[%d].access must be r, w or rw" $i) }}
{{- end }}
{{- if not $t.namespaces }}
{{- fail (printf "auth.tokens[%d].namespaces must list at least one prefix (\"*\" for all)" $i) }}
{{- end }}
{{ $token }} {{ $t.access }} {{ join "," $t.namespaces }}
{{- end }}
{{- end }}

{{/* The server's flag file (absl --flagfile format: one flag per line, # comments). */}}
{{- define "kvtier.flags" -}}
{{- $s := .Values.server -}}
# kvtier-server flags, rendered by the kvtier Helm chart (docs/service-contract.md)
--listen={{ $s.listenHost }}:{{ int $s.ports.grpc }}
--ucx_port={{ int $s.ports.ucx }}
--ucx_workers={{ int $s.ucxWorkers }}
--http_port={{ int $s.ports.http }}
--memory_capacity={{ $s.memoryCapacity }}
--reserve_memory={{ $s.reserveMemory }}
--disk_capacity={{ $s.diskCapacity }}
--data_dir={{ include "kvtier.dataMount" . }}/rocksdb
--sync_writes={{ $s.syncWrites }}
{{- if $s.namespaceQuota }}
--namespace_quota={{ $s.namespaceQuota }}
{{- end }}
--max_chain_length={{ int $s.maxChainLength }}
--max_blocks_per_put={{ int $s.maxBlocksPerPut }}
--max_message_bytes={{ $s.maxMessageBytes }}
--max_concurrent_streams={{ int $s.maxConcurrentStreams }}
--drain_timeout={{ int $s.drainTimeoutSeconds }}s
--ucx_session_ttl={{ $s.ucxSessionTtl }}
{{- if .Values.auth.enabled }}
--token_file={{ include "kvtier.authMount" . }}/tokens
{{- end }}
{{- if .Values.tls.enabled }}
--tls_cert={{ include "kvtier.tlsMount" . }}/tls.crt
--tls_key={{ include "kvtier.tlsMount" . }}/tls.key
{{- if .Values.tls.clientAuth }}
--tls_client_ca={{ include "kvtier.tlsMount" . }}/ca.crt
{{- end }}
{{- end }}
{{- range .Values.server.extraFlags }}
{{ . }}
{{- end }}
{{- end }}

{{/* The UCX workers' ports as a list of {name, port}: "ucx" (ports.ucx), "ucx-1", ...
Empty when UCX is disabled. */}}
{{- define "kvtier.ucxPorts" -}}
{{- $s := .Values.server }}
{{- $out := list }}
{{- if ne (int $s.ports.ucx) 0 }}
{{- range $i := until (int $s.ucxWorkers) }}
{{- $name := ternary "ucx" (printf "ucx-%d" $i) (eq $i 0) }}
{{- $out = append $out (dict "name" $name "port" (add (int $s.ports.ucx) $i)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}
