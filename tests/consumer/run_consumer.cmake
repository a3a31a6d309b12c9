# Installs the build tree at VARKV_BUILD_DIR into a staging prefix, then configures, builds and runs
# the consumer project against it. Any failing step fails the test.
set(stage ${WORK_DIR}/stage)
file(REMOVE_RECURSE ${WORK_DIR})
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test: '${ARGN}' failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
step(${CMAKE_COMMAND_PATH} --install ${VARKV_BUILD_DIR} --prefix ${stage})
step(${CMAKE_COMMAND_PATH} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${stage}
     -DCMAKE_BUILD_TYPE=Release)
step(${CMAKE_COMMAND_PATH} --build ${WORK_DIR}/build)
step(${WORK_DIR}/build/consumer)
