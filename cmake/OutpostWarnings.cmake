# Compile options applied to every outpost target through outpost_options.
add_library(outpost_options INTERFACE)
target_compile_options(outpost_options INTERFACE -Wall -Wextra -Wpedantic -Wshadow
  -Wnon-virtual-dtor -Wimplicit-fallthrough)
if(OUTPOST_WERROR)
  target_compile_options(outpost_options INTERFACE -Werror)
endif()
if(OUTPOST_SANITIZE)
  target_compile_options(outpost_options INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer
    -fno-sanitize-recover=undefined)
  target_link_options(outpost_options INTERFACE -fsanitize=address,undefined)
endif()
if(OUTPOST_FUZZ)
  # Instrument all outpost code for coverage; the fuzz targets add -fsanitize=fuzzer at link.
  target_compile_options(outpost_options INTERFACE -fsanitize=fuzzer-no-link,address,undefined)
  target_link_options(outpost_options INTERFACE -fsanitize=address,undefined)
endif()
