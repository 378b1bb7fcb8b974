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
if(KVTIER_GO AND EXISTS /usr/share/gocode/src/github.com/Masterminds/sprig)
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
  message(WARNING "deploy_helm_chart skipped: needs golang-go and golang-github-masterminds-sprig-dev")
endif()
