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
if(NOT OUTPOST_SANITIZE AND NOT OUTPOST_FUZZ)
  # Each function and object in a section of its own, and the linker drops those nothing
  # reaches: outpostd's text is mapped whole (the kernel maps file pages around each one
  # touched), so every unused function is resident memory (docs/benchmarks.md: outpostd's RSS).
  target_compile_options(outpost_options INTERFACE -ffunction-sections -fdata-sections)
  target_link_options(outpost_options INTERFACE -Wl,--gc-sections)
endif()
