# Finds the fixed dependencies. Debian 12 packages; scripts/setup.sh installs them.
find_package(PkgConfig REQUIRED)
pkg_check_modules(TSS2 REQUIRED IMPORTED_TARGET tss2-esys tss2-tctildr tss2-mu tss2-rc)

# mbedTLS 2.28 ships neither pkg-config nor CMake config files on Debian 12.
find_path(MBEDTLS_INCLUDE_DIR mbedtls/version.h REQUIRED)
find_library(MBEDTLS_LIBRARY mbedtls REQUIRED)
find_library(MBEDX509_LIBRARY mbedx509 REQUIRED)
find_library(MBEDCRYPTO_LIBRARY mbedcrypto REQUIRED)
add_library(outpost_mbedtls INTERFACE)
target_include_directories(outpost_mbedtls SYSTEM INTERFACE ${MBEDTLS_INCLUDE_DIR})
target_link_libraries(outpost_mbedtls INTERFACE ${MBEDTLS_LIBRARY} ${MBEDX509_LIBRARY} ${MBEDCRYPTO_LIBRARY})

# Boost 1.81 from libboost1.81-dev (Debian 12's default is 1.74).
set(Boost_NO_WARN_NEW_VERSIONS ON)
find_package(Boost 1.81 EXACT REQUIRED COMPONENTS json program_options)

find_package(yaml-cpp REQUIRED)
find_package(Threads REQUIRED)
