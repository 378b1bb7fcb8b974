# Deploy checks (label `deploy`): the Helm chart rendered like `helm template`, the
# Prometheus rules with promtool, the Grafana dashboard against the metric contract and a
# live kvtier-server, and the Dockerfile's structure. Tools: scripts/install-deps.sh
# (golang-go, golang-github-masterminds-sprig-dev, prometheus, python3-yaml).
find_program(KVTIER_GO go)
find_program(KVTIER_PROMTOOL promtool)
find_program(KVTIER_SYS_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)  # has yaml
set(_deploy_dir ${PROJECT_SOURCE_DIR}/deploy)
set(_deploy_tests ${CMAKE_CURRENT_SOURCE_DIR}/deploy)
set(_contract ${PROJECT_SOURCE_DIR}/docs/service-contract.md)

if(NOT KVTIER_SYS_PYTHON)
  message(WARNING "deploy checks skipped: /usr/bin/python3 not found")
  return()
endif()

# helmrender: Go + Debian's sprig, built offline in GOPATH mode. Debian installs sprig v3
# and semver v3 without the /v3 path element, so a small GOPATH in the build dir links
# them under their module paths; Go's build cache lives in the build dir too.
if(KVTIER_GO AND EXISTS /usr/share/gocode/src/github.com/Masterminds/sprig AND EXISTS /usr/share/gocode/src/gopkg.in/yaml.v3)
  set(_gopath ${CMAKE_CURRENT_BINARY_DIR}/deploy-gopath)
  file(MAKE_DIRECTORY ${_gopath}/src/github.com/Masterminds/sprig ${_gopath}/src/github.com/Masterminds/semver)
  file(CREATE_LINK /usr/share/gocode/src/github.com/Masterminds/sprig
       ${_gopath}/src/github.com/Masterminds/sprig/v3 SYMBOLIC)
  file(CREATE_LINK /usr/share/gocode/src/github.com/Masterminds/semver
       ${_gopath}/src/github.com/Masterminds/semver/v3 SYMBOLIC)
  set(_helmrender ${CMAKE_CURRENT_BINARY_DIR}/helmrender)
  add_custom_command(OUTPUT ${_helmrender}
    COMMAND ${CMAKE_COMMAND} -E env GO111MODULE=off GOFLAGS= GOPROXY=off
            GOPATH=${_gopath}:/usr/share/gocode GOCACHE=${CMAKE_CURRENT_BINARY_DIR}/deploy-gocache
            ${KVTIER_GO} build -trimpath -o ${_helmrender} .
    WORKING_DIRECTORY ${_deploy_tests}/helmrender
    DEPENDS ${_deploy_tests}/helmrender/main.go
    COMMENT "Building helmrender (Go)"
    VERBATIM)
  add_custom_target(kvtier_helmrender ALL DEPENDS ${_helmrender})
  add_test(NAME deploy_helm_chart
    COMMAND ${KVTIER_SYS_PYTHON} ${_deploy_tests}/check_chart.py ${_helmrender}
            ${_deploy_dir}/helm/kvtier ${_contract})
  set_tests_properties(deploy_helm_chart PROPERTIES LABELS deploy TIMEOUT 60)
else()
  message(WARNING "deploy_helm_chart skipped: needs golang-go, golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v3-dev")
endif()

# Prometheus rules: syntax (promtool check rules) and unit tests (promtool test rules).
if(KVTIER_PROMTOOL)
  file(GLOB _deploy_rules CONFIGURE_DEPENDS ${_deploy_dir}/prometheus/*.yaml)
  file(GLOB _deploy_rule_tests CONFIGURE_DEPENDS ${_deploy_dir}/prometheus/tests/*.yaml)
  add_test(NAME deploy_prometheus_check_rules COMMAND ${KVTIER_PROMTOOL} check rules ${_deploy_rules})
  add_test(NAME deploy_prometheus_test_rules COMMAND ${KVTIER_PROMTOOL} test rules ${_deploy_rule_tests})
  set_tests_properties(deploy_prometheus_check_rules deploy_prometheus_test_rules
    PROPERTIES LABELS deploy TIMEOUT 60)

  # Dashboard and rules against the metric contract, and against a live kvtier-server's
  # /metrics when the server is built (skipped with a message otherwise).
  if(TARGET kvtier-server)
    set(_deploy_server $<TARGET_FILE:kvtier-server>)
  else()
    set(_deploy_server ${CMAKE_BINARY_DIR}/service/kvtier-server)
  endif()
  if(NOT _helmrender)
    set(_helmrender ${CMAKE_CURRENT_BINARY_DIR}/helmrender)
  endif()
  add_test(NAME deploy_dashboard_metrics
    COMMAND ${KVTIER_SYS_PYTHON} ${_deploy_tests}/check_metrics.py
            --contract ${_contract} --dashboard ${_deploy_dir}/grafana/kvtier.json
            --rules-dir ${_deploy_dir}/prometheus --promtool ${KVTIER_PROMTOOL}
            --server ${_deploy_server} --helmrender ${_helmrender}
            --chart ${_deploy_dir}/helm/kvtier --proto-dir ${PROJECT_SOURCE_DIR}/proto)
  set_tests_properties(deploy_dashboard_metrics PROPERTIES LABELS deploy TIMEOUT 90)
else()
  message(WARNING "Prometheus and dashboard checks skipped: promtool not found (Debian package prometheus)")
endif()

# Dockerfile structure (no Docker engine on CI machines), and the shared libraries of the
# server and the CLI (the image's two binaries) against the runtime stage's packages.
if(TARGET kvtier-server)
  set(_deploy_server $<TARGET_FILE:kvtier-server>)
else()
  set(_deploy_server ${CMAKE_BINARY_DIR}/service/kvtier-server)
endif()
add_test(NAME deploy_dockerfile
  COMMAND ${KVTIER_SYS_PYTHON} ${_deploy_tests}/check_dockerfile.py ${_deploy_dir}/docker/Dockerfile
          ${PROJECT_SOURCE_DIR} --binary ${_deploy_server} --binary $<TARGET_FILE:kvtier>)
set_tests_properties(deploy_dockerfile PROPERTIES LABELS deploy TIMEOUT 60)
