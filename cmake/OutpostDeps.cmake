# Finds the fixed dependencies. Debian 12 packages; scripts/setup.sh installs them.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
pkg_check_modules(TSS2 REQUIRED IMPORTED_TARGET tss2-esys tss2-tctildr tss2-mu tss2-rc)

# mbedTLS 2.28 ships neither pkg-config nor CMake config files on Debian 12.
find_path(MBEDTLS_INCLUDE_DIR mbedtls/version.h REQUIRED)
# OUTPOST_STATIC_DEPS (CMakeLists.txt) takes the static archives the -dev packages ship, for
# mbedTLS, Boost.JSON and program_options, yaml-cpp and RE2: all under permissive licences.
# libseccomp (LGPL-2.1) and tpm2-tss's libraries (whose ESAPI loads OpenSSL) stay shared.
if(OUTPOST_STATIC_DEPS)
  find_library(MBEDTLS_LIBRARY_STATIC libmbedtls.a REQUIRED)
  find_library(MBEDX509_LIBRARY_STATIC libmbedx509.a REQUIRED)
  find_library(MBEDCRYPTO_LIBRARY_STATIC libmbedcrypto.a REQUIRED)
  set(MBEDTLS_LIBRARIES ${MBEDTLS_LIBRARY_STATIC} ${MBEDX509_LIBRARY_STATIC} ${MBEDCRYPTO_LIBRARY_STATIC})
else()
  find_library(MBEDTLS_LIBRARY mbedtls REQUIRED)
  find_library(MBEDX509_LIBRARY mbedx509 REQUIRED)
  find_library(MBEDCRYPTO_LIBRARY mbedcrypto REQUIRED)
  set(MBEDTLS_LIBRARIES ${MBEDTLS_LIBRARY} ${MBEDX509_LIBRARY} ${MBEDCRYPTO_LIBRARY})
endif()
add_library(outpost_mbedtls INTERFACE)
target_include_directories(outpost_mbedtls SYSTEM INTERFACE ${MBEDTLS_INCLUDE_DIR})
target_link_libraries(outpost_mbedtls INTERFACE ${MBEDTLS_LIBRARIES})

# Boost 1.81 from libboost1.81-dev (Debian 12's default is 1.74).
set(Boost_NO_WARN_NEW_VERSIONS ON)
set(Boost_USE_STATIC_LIBS ${OUTPOST_STATIC_DEPS})
find_package(Boost 1.81 EXACT REQUIRED COMPONENTS json program_options)

# yaml-cpp and RE2 behind targets of ours, shared or static as OUTPOST_STATIC_DEPS says.
find_package(yaml-cpp REQUIRED)
add_library(outpost_yaml INTERFACE)
pkg_check_modules(RE2 REQUIRED IMPORTED_TARGET re2)
add_library(outpost_re2 INTERFACE)
if(OUTPOST_STATIC_DEPS)
  find_library(YAML_CPP_STATIC libyaml-cpp.a REQUIRED)
  get_target_property(yaml_includes yaml-cpp INTERFACE_INCLUDE_DIRECTORIES)
  target_include_directories(outpost_yaml SYSTEM INTERFACE ${yaml_includes})
  target_link_libraries(outpost_yaml INTERFACE ${YAML_CPP_STATIC})
  find_library(RE2_STATIC libre2.a REQUIRED)
  target_include_directories(outpost_re2 SYSTEM INTERFACE ${RE2_INCLUDE_DIRS})
  target_link_libraries(outpost_re2 INTERFACE ${RE2_STATIC} Threads::Threads)
else()
  target_link_libraries(outpost_yaml INTERFACE yaml-cpp)
  target_link_libraries(outpost_re2 INTERFACE PkgConfig::RE2)
endif()
