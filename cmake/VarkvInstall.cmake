# `cmake --install` + an exported config: find_package(varkv CONFIG REQUIRED) -> varkv::varkv.
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)

install(TARGETS varkv EXPORT varkvTargets)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/varkv DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT varkvTargets NAMESPACE varkv:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/varkv)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/varkvConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/varkvConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/varkv)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/varkvConfigVersion.cmake COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/varkvConfig.cmake ${PROJECT_BINARY_DIR}/varkvConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/varkv)
