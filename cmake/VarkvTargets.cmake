# Helpers for varkv's own executables: warnings, sanitizers, CUDA flags.
include_guard(GLOBAL)
include(GNUInstallDirs)

function(varkv_configure_target target)
  target_link_libraries(${target} PRIVATE varkv::varkv)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unknown-pragmas>
    $<$<COMPILE_LANGUAGE:CUDA>:${VARKV_CUDA_GENCODE} -lineinfo -Xcompiler=-Wall
      # 20208: fmt and GoogleTest mention long double in host code that nvcc also parses for the device.
      -diag-suppress=20208>)
  if(VARKV_SANITIZE)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all>)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# A CUDA executable; on machines without nvcc it is simply not built.
function(varkv_cuda_executable target)
  add_executable(${target} ${ARGN})
  varkv_configure_target(${target})
  # The CPU references that tests and benchmarks run beside the kernels are OpenMP-parallel; the
  # OpenMP target only flags C++ sources, so pass -fopenmp to nvcc's host compiler too.
  target_link_libraries(${target} PRIVATE CUDA::cudart OpenMP::OpenMP_CXX)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fopenmp>)
  set_target_properties(${target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
endfunction()
