{{/*
Names, labels and the pieces every component's pod shares.
*/}}

{{- define "throttle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; every object is "<fullname>-<component>". */}}
{{- define "throttle.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", cut to 63 characters. Call with (dict "root" $ "component" "webhook"). */}}
{{- define "throttle.componentName" -}}
{{- printf "%s-%s" (include "throttle.fullname" .root | trunc 50 | trimSuffix "-") .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "throttle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Call with (dict "root" $ "component" "webhook"). */}}
{{- define "throttle.labels" -}}
helm.sh/chart: {{ include "throttle.chart" .root }}
{{ include "throttle.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: throttle
{{- with .root.Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that pick one component's pods (stable across upgrades). */}}
{{- define "throttle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "throttle.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference: repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "throttle.image" -}}
{{- $image := .Values.image -}}
{{- $ref := $image.repository -}}
{{- if $image.registry }}{{ $ref = printf "%s/%s" $image.registry $image.repository }}{{ end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end }}

{{/* ServiceAccount name of a component. Call with (dict "root" $ "component" "webhook"). */}}
{{- define "throttle.serviceAccountName" -}}
{{- $sa := (index .root.Values .component).serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "throttle.componentName" .) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end }}

{{/* The Secret holding DATABASE_URL, REDIS_URL and the other secrets. */}}
{{- define "throttle.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "throttle.fullname" . -}}
{{- end -}}
{{- end }}

{{/* The Secret holding CONSOLE_SESSION_KEY: console.existingSecret, else the chart's own. */}}
{{- define "throttle.consoleSecretName" -}}
{{- default (include "throttle.componentName" (dict "root" . "component" "console")) .Values.console.existingSecret -}}
{{- end }}

{{/* The webhook Service's port the console's Ingress routes to. */}}
{{- define "throttle.consoleServicePort" -}}
{{- default .Values.webhook.service.port .Values.console.port -}}
{{- end }}

{{/* The ConfigMap holding the non-secret settings. */}}
{{- define "throttle.configName" -}}
{{- printf "%s-config" (include "throttle.fullname" .) -}}
{{- end }}

{{/*
Secret settings: environment variable -> (values key, required?). Keys in an existingSecret are
named as the environment variables.
*/}}
{{- define "throttle.secretKeys" -}}
DATABASE_URL: {value: databaseUrl, required: true}
REDIS_URL: {value: redisUrl, required: true}
HUBSPOT_CLIENT_SECRET: {value: hubspotClientSecret, required: true}
HUBSPOT_CLIENT_SECRET_PREVIOUS: {value: hubspotClientSecretPrevious, required: false}
ENCRYPTION_KEY: {value: encryptionKey, required: true}
SECRET_KEY_BASE: {value: secretKeyBase, required: true}
THROTTLE_API_TOKEN: {value: throttleApiToken, required: false}
{{- end }}

{{/*
env entries for the secret settings a component reads. A key the chart's own Secret does not
hold is left out, so the command stops at start naming the missing variable; with an
existingSecret the required keys must be there and the optional ones may be missing.
Call with (dict "root" $ "names" (list "REDIS_URL" ...)).
*/}}
{{- define "throttle.secretEnv" -}}
{{- $root := .root -}}
{{- $keys := include "throttle.secretKeys" $root | fromYaml -}}
{{- range .names }}
{{- $key := index $keys . }}
{{- $present := or $root.Values.secrets.existingSecret (index $root.Values.secrets $key.value) }}
{{- if $present }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "throttle.secretName" $root }}
      key: {{ . }}
      {{- if not $key.required }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Required secret settings that have no value (empty when an existingSecret is used). */}}
{{- define "throttle.missingSecrets" -}}
{{- $root := . -}}
{{- $missing := list -}}
{{- if not .Values.secrets.existingSecret -}}
{{- range $name, $key := include "throttle.secretKeys" . | fromYaml -}}
{{- if and $key.required (not (index $root.Values.secrets $key.value)) -}}
{{- $missing = append $missing $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join ", " $missing -}}
{{- end }}

{{/* The URL HubSpot calls: settings.publicUrl, else https://<first ingress host>. */}}
{{- define "throttle.publicUrl" -}}
{{- if .Values.settings.publicUrl -}}
{{- .Values.settings.publicUrl | trimSuffix "/" -}}
{{- else if and .Values.webhook.ingress.enabled .Values.webhook.ingress.hosts -}}
{{- printf "https://%s" (first .Values.webhook.ingress.hosts).host -}}
{{- end -}}
{{- end }}

{{/* Pod-level security context: restricted Pod Security Standard, non-root uid 10001. */}}
{{- define "throttle.podSecurityContext" -}}
{{- toYaml .Values.global.podSecurityContext }}
{{- end }}

{{/* Container-level security context: no privilege escalation, no capabilities, read-only root. */}}
{{- define "throttle.containerSecurityContext" -}}
{{- toYaml .Values.global.containerSecurityContext }}
{{- end }}

{{/* Pod spec fields every component shares. Call with (dict "root" $ "component" "webhook"). */}}
{{- define "throttle.podCommon" -}}
{{- $values := index .root.Values .component -}}
{{- with .root.Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.global.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- include "throttle.podSecurityContext" .root | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .root.Values.global.tmpSizeLimit }}
{{- end }}

{{/*
topologySpreadConstraints from a component's `spread` values: one constraint per topology key,
each picking this component's pods. Call with (dict "root" $ "component" "webhook").
*/}}
{{- define "throttle.topologySpread" -}}
{{- $ctx := . -}}
{{- $spread := (index .root.Values .component).spread -}}
{{- if and $spread.enabled $spread.topologyKeys }}
topologySpreadConstraints:
{{- range $spread.topologyKeys }}
  - maxSkew: {{ $spread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "throttle.selectorLabels" $ctx | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Container fields every component shares: image, env, mounts, security. */}}
{{- define "throttle.containerCommon" -}}
{{- $values := index .root.Values .component -}}
image: {{ include "throttle.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  {{- include "throttle.containerSecurityContext" .root | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "throttle.configName" .root }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- with $values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The paths an ingress host routes when it lists none: what must be public, nothing more. */}}
{{- define "throttle.ingressPaths" -}}
- {path: /api/hubspot, pathType: Prefix}
- {path: /api/oauth, pathType: Prefix}
- {path: /api/config, pathType: Prefix}
{{- end }}

{{/* Checks that stop an install with a clear message instead of a broken release. */}}
{{- define "throttle.validate" -}}
{{- if and .Values.webhook.ingress.enabled (not .Values.webhook.ingress.hosts) -}}
{{- fail "ERROR: webhook.ingress.enabled needs at least one entry in webhook.ingress.hosts" -}}
{{- end -}}
{{- range .Values.webhook.ingress.hosts -}}
{{- range (default (include "throttle.ingressPaths" $ | fromYamlArray) .paths) -}}
{{- if has (trimSuffix "/" .path) (list "" "/api" "/api/openapi.json") -}}
{{- fail (printf "ERROR: webhook.ingress.hosts path %q would route /api/openapi.json (and more) from outside; route /api/hubspot, /api/oauth and /api/config instead (SECURITY.md)" .path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.dispatcher.keda.enabled (not .Values.dispatcher.keda.prometheus.serverAddress) -}}
{{- fail "ERROR: dispatcher.keda.enabled needs dispatcher.keda.prometheus.serverAddress (the Prometheus KEDA queries)" -}}
{{- end -}}
{{- $publicUrl := include "throttle.publicUrl" . -}}
{{- if not $publicUrl -}}
{{- fail "ERROR: set settings.publicUrl to the https:// URL HubSpot calls (or enable webhook.ingress with a host): without it the webhook cannot check HubSpot's signatures and refuses to start" -}}
{{- end -}}
{{- if and $publicUrl (not (hasPrefix "https://" $publicUrl)) (not (regexMatch "^http://(localhost|127\\.0\\.0\\.1)([:/]|$)" $publicUrl)) -}}
{{- fail "ERROR: settings.publicUrl must be https:// (HubSpot only calls HTTPS)" -}}
{{- end -}}
{{- if and .Values.console.enabled (not .Values.console.sessionKey) (not .Values.console.existingSecret) -}}
{{- fail "ERROR: console.enabled needs console.sessionKey (at least 32 characters) or console.existingSecret (a Secret with the key CONSOLE_SESSION_KEY)" -}}
{{- end -}}
{{- if and .Values.console.enabled .Values.console.port (eq (int .Values.console.port) (int .Values.webhook.port)) -}}
{{- fail "ERROR: console.port must differ from webhook.port (0 serves the console under the webhook's port)" -}}
{{- end -}}
{{- if and .Values.webhook.configApi.clusterMode (not .Values.webhook.serviceAccount.create) (not .Values.webhook.serviceAccount.name) -}}
{{- fail "ERROR: webhook.configApi.clusterMode needs the webhook's own ServiceAccount (webhook.serviceAccount.create or .name)" -}}
{{- end -}}
{{- end }}

{{/*
A ServiceMonitor for one component's Service. Call with
(dict "root" $ "component" "dispatcher" "port" "metrics").
*/}}
{{- define "throttle.serviceMonitor" -}}
{{- $sm := .root.Values.monitoring.serviceMonitor -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "throttle.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "throttle.labels" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "throttle.selectorLabels" . | nindent 6 }}
  namespaceSelector:
    matchNames: [{{ .root.Release.Namespace }}]
  endpoints:
    - port: {{ .port }}
      path: /metrics
      interval: {{ $sm.interval }}
      scrapeTimeout: {{ $sm.scrapeTimeout }}
{{- end }}

{{/* PromQL label matchers picking this release's targets. */}}
{{- define "throttle.promSelector" -}}
namespace="{{ .Release.Namespace }}",job=~"{{ include "throttle.fullname" . }}-.*"
{{- end }}

